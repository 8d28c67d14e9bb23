"""Execute one corpus analysis: what the Celery task ``bertpt.analyze_corpus`` calls.

    execute_analysis(analysis_id)

1. **Claim** (``queued -> running``, ``attempt + 1``, one conditional UPDATE): a duplicate delivery, or a
   task sent again for an analysis already done, gets nothing. Errors before this point propagate (the task
   retries them); after it, every outcome is recorded on the analysis.
2. **Inputs** from rows only: the corpus's file, the base model resolved again (its tokenizer), the shared
   prepared-data cache of the storage (a run with the same settings then finds the data prepared).
3. **Analyse** in a ``spawn``-ed child (:func:`run_analysis_job`, supervised by
   :func:`worker.supervision.supervise_child`: the tokenizer and transformers stay out of this process, and
   their memory goes back to the system when it exits) while this process renews the heartbeat about once a
   second; a lapsed lease stops the child.
4. **Finish**: succeeded with the :class:`~worker.pretraining.estimates.CorpusAnalysis` as JSON, or failed
   with ``{type, message}``: ``corpus_format_error`` (with ``line``), ``data_preparation_error``,
   ``hyperparameter_error``, ``base_model_error``, ``input_error`` (the corpus or the base model gone),
   ``analysis_process_died``, ``internal_error`` (the details in this log). The API sends a lost one again
   (:mod:`app.estimates.analyses`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any

from app.base_models.service import resolve_base_model
from app.db import session_scope
from app.errors import ValidationFailed
from app.estimates import repository
from app.models import Analysis, AnalysisStatus, Corpus, Tenant
from app.storage.keys import PREPARED_DATA
from worker.context import WorkerContext, get_worker_context
from worker.failures import RunFailure, describe_process_death, scrub_paths
from worker.pretraining.estimates import CorpusAnalysis
from worker.supervision import supervise_child, write_with_retries
from worker.training_process import _Event, _Queue, configure_child_process, exit_now

__all__ = ["AnalysisJob", "describe_analysis_failure", "execute_analysis", "run_analysis_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnalysisJob:
    """What the analysis process needs, as plain values (pickled to it)."""

    analysis_id: str
    corpus: str  # local path
    corpus_id: str
    tokenizer: str  # the base model's directory, or a hub id
    base_model_spec: str
    cache_dir: str
    hyperparameters: dict[str, Any]
    hf_hub_offline: bool = False


@dataclass(frozen=True)
class _Lease:
    owned: bool
    cancel_requested: bool = False
    confirmed: bool = True


def execute_analysis(analysis_id: str, *, context: WorkerContext | None = None) -> AnalysisStatus | None:
    """Analyse ``analysis_id`` if it can be claimed; its final status, or None when it was not claimed (or
    was taken away from this attempt)."""
    context = context or get_worker_context()
    with session_scope(context.session_factory) as session:
        attempt = repository.claim(session, analysis_id)
    if attempt is None:
        logger.info("analysis %s not claimed: it is not queued (a duplicate delivery)", analysis_id)
        return None
    logger.info("analysis %s claimed by %s (attempt %d)", analysis_id, context.worker_id, attempt)
    try:
        job = _job(analysis_id, context)
    except _InputGone as exc:
        return _finish(context, analysis_id, attempt, failure=RunFailure("input_error", str(exc)))
    outcome: list[CorpusAnalysis | RunFailure] = []

    def flush() -> _Lease:
        try:
            with session_scope(context.session_factory) as session:
                return _Lease(owned=repository.renew(session, analysis_id, attempt))
        except Exception as exc:  # the database briefly unreachable: the lease is not renewed
            logger.warning("analysis %s: heartbeat failed (%s)", analysis_id, exc)
            return _Lease(owned=True, confirmed=False)

    try:
        end = supervise_child(
            run_analysis_job,
            job,
            label=f"analysis {analysis_id}",
            what="analysis process",
            process_name=f"bertpt-analysis-{analysis_id}",
            receive=outcome.append,
            flush=flush,
            context=context,
        )
    except Exception:
        logger.exception("analysis %s: the supervisor failed", analysis_id)
        return _finish(context, analysis_id, attempt, failure=_internal_error(analysis_id))
    if end.lost:
        return None
    result = outcome[-1] if outcome else describe_process_death(end.exitcode)
    if isinstance(result, RunFailure):
        if result.type == "training_process_died":
            result = dataclasses.replace(
                result, type="analysis_process_died", message=result.message.replace("training", "analysis")
            )
        if result.traceback:
            logger.error("analysis %s failed:\n%s", analysis_id, result.traceback)
        return _finish(context, analysis_id, attempt, failure=result)
    return _finish(context, analysis_id, attempt, result=result)


class _InputGone(Exception):
    """The corpus or the base model the analysis names is gone."""


def _job(analysis_id: str, context: WorkerContext) -> AnalysisJob:
    settings, storage = context.settings, context.storage
    with session_scope(context.session_factory) as session:
        analysis = session.get(Analysis, analysis_id)
        corpus = session.get(Corpus, analysis.corpus_id) if analysis is not None else None
        tenant = session.get(Tenant, analysis.tenant_id) if analysis is not None else None
        if analysis is None or corpus is None or tenant is None:
            raise _InputGone(f"the corpus of analysis {analysis_id} no longer exists")
        try:
            corpus_path = storage.fetch(corpus.storage_key)
        except FileNotFoundError:
            raise _InputGone(
                f"the file of corpus {corpus.id} is missing from storage; ask the operator"
            ) from None
        try:
            base = resolve_base_model(
                session, tenant, analysis.base_model, settings=settings, storage=storage
            )
        except ValidationFailed as exc:
            raise _InputGone(exc.message) from None
        return AnalysisJob(
            analysis_id=analysis.id,
            corpus=str(corpus_path),
            corpus_id=corpus.id,
            tokenizer=base.source,
            base_model_spec=str(base.spec),
            cache_dir=str(storage.local_cache_dir(PREPARED_DATA)),
            hyperparameters=dict(analysis.hyperparameters),
            hf_hub_offline=settings.hf_hub_offline,
        )


def _finish(
    context: WorkerContext,
    analysis_id: str,
    attempt: int,
    *,
    result: CorpusAnalysis | None = None,
    failure: RunFailure | None = None,
) -> AnalysisStatus | None:
    def write(session: Any) -> bool:
        return repository.finish(
            session,
            analysis_id,
            attempt,
            result=result.model_dump(mode="json") if result is not None else None,
            error=failure.as_error() if failure is not None else None,
        )

    if not write_with_retries(context.session_factory, write, label=f"analysis {analysis_id}"):
        logger.info("analysis %s: no longer held by attempt %d; nothing written", analysis_id, attempt)
        return None
    status = AnalysisStatus.SUCCEEDED if failure is None else AnalysisStatus.FAILED
    logger.info("analysis %s %s", analysis_id, status.value)
    return status


def _internal_error(analysis_id: str) -> RunFailure:
    return RunFailure(
        "internal_error",
        f"the analysis stopped on an internal error; the operators can find the details in the worker log "
        f"under analysis {analysis_id}",
    )


# -- the analysis process ------------------------------------------------------------------------------------


def run_analysis_job(job: AnalysisJob, messages: _Queue, stop: _Event) -> None:
    """The child process's entry point: analyse, report the CorpusAnalysis or a RunFailure through
    ``messages``. The preparation is not interruptible; a lapsed lease terminates the process."""
    configure_child_process(f"analysis {job.analysis_id}", hf_hub_offline=job.hf_hub_offline)
    try:
        from worker.pretraining.analysis import analyze_corpus
        from worker.pretraining.hyperparameters import Hyperparameters

        h = Hyperparameters.model_validate(job.hyperparameters)
        result = analyze_corpus(job.corpus, job.tokenizer, h.preparation(), job.cache_dir, h)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        failure = describe_analysis_failure(exc, job)
        messages.put(dataclasses.replace(failure, traceback=traceback.format_exc()))
        exit_now(messages)
    messages.put(result)
    exit_now(messages)


def describe_analysis_failure(exc: BaseException, job: AnalysisJob) -> RunFailure:
    """What the owner of the analysis is told of ``exc`` (the worker's paths replaced by the corpus's and
    the base model's names)."""
    from pydantic import ValidationError

    from worker.pretraining.corpus import CorpusFormatError
    from worker.pretraining.hyperparameters import HyperparameterError
    from worker.pretraining.model_files import BaseModelError
    from worker.pretraining.preparation_rules import PreparationError

    replacements = {job.corpus: f"corpus {job.corpus_id}", job.cache_dir: "the prepared-data cache"}
    if os.path.isabs(job.tokenizer):
        replacements[job.tokenizer] = job.base_model_spec

    def clean(text: str) -> str:
        return scrub_paths(text, replacements)

    if isinstance(exc, CorpusFormatError):
        where = f"corpus {job.corpus_id}" + (f", line {exc.line}" if exc.line else "")
        return RunFailure(
            "corpus_format_error", f"{where}: {clean(exc.message)}", {"line": exc.line, "code": exc.code}
        )
    if isinstance(exc, PreparationError):
        return RunFailure("data_preparation_error", clean(str(exc)))
    if isinstance(exc, (HyperparameterError, ValidationError)):
        return RunFailure("hyperparameter_error", clean(str(exc)))
    if isinstance(exc, BaseModelError):
        return RunFailure("base_model_error", clean(str(exc)))
    return _internal_error(job.analysis_id)
