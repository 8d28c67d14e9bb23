"""The estimate of a run before it is submitted (``POST /v1/runs/estimate``) and the ``eta_seconds`` of runs.

A run's own time (:func:`own_estimate`) is the training library's arithmetic
(:mod:`worker.pretraining.estimates`) over:

- its steps and tokens: exact from a corpus analysis of its corpus with its tokenizer and preparation
  settings (:func:`app.estimates.analyses.cached_analysis`; not with a separate eval corpus, which changes
  the split, nor with ``add_domain_tokens``, whose extended tokenizer the analysis did not use), else
  approximated from the corpus's stored counts;
- its evaluation passes over the held-out split, the eval corpus and the reference corpus (only the held-out
  part of a reference corpus that is also the replay corpus, as the engine evaluates it), and the
  preparation of every corpus it reads (the replay corpus's too);
- the throughput and startup the workers measured (:mod:`app.estimates.throughput`), else the defaults.

The queue ahead (:func:`queue_waits`) is list scheduling over the training slots that live workers announced
(:mod:`app.estimates.workers`): the runs in a worker's hands free their slot when their remaining time is
over (a running run's own pace: its progress's ``eta_seconds``), and the queued runs take the first free
slot in the order the queue serves them. Evaluations and analyses sharing the workers are not counted.

``eta_seconds`` of a run: queued, its wait plus its own time; preparing, its own time less what it has
spent; running, its progress's (remaining steps at its own measured pace); null when it has ended, is being
cancelled, or cannot be estimated.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from app.base_models.service import ResolvedBaseModel, resolve_base_model
from app.config import Settings
from app.errors import AppError
from app.estimates import repository
from app.estimates.analyses import cached_analysis
from app.estimates.schemas import QueueAhead, RunEstimate, Throughput
from app.estimates.throughput import Workers, measured_runs
from app.estimates.workers import WorkerRegistry
from app.evaluations.service import check_downstream
from app.models import Corpus, Run, Tenant, utcnow
from app.runs.schemas import RunCreate
from app.runs.states import RunStatus
from app.runs.submission import check_run
from app.storage import Storage
from worker.pretraining.estimates import (
    DEFAULT_MODEL_SHAPE,
    PREPARATION_BYTES_PER_SECOND,
    CorpusAnalysis,
    StepFigures,
    approximate_corpus,
    evaluation_passes,
    run_seconds,
    step_figures,
)
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.model_files import BaseModelError, read_config
from worker.pretraining.preparation_rules import PreparationError, held_out_split
from worker.pretraining.records import ModelShape

__all__ = ["OwnEstimate", "QueueModel", "estimate_run", "own_estimate", "queue_waits", "run_etas"]

logger = logging.getLogger(__name__)

# The runs queued or in hands that the queue model looks at (a longer queue: those beyond wait longer).
MAX_QUEUE = 200


@dataclass(frozen=True)
class OwnEstimate:
    """A run's own figures, from a worker taking it to its end."""

    exact: bool
    analysis_id: str | None
    steps: StepFigures
    evaluations: int
    evaluation_tokens: int
    throughput: Throughput
    seconds_per_step: float
    training_seconds: float
    evaluation_seconds: float
    startup_seconds: float
    startup_source: Literal["measured", "default"]

    @property
    def total_seconds(self) -> float:
        return self.startup_seconds + self.training_seconds + self.evaluation_seconds


def estimate_run(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant: Tenant,
    body: RunCreate,
    *,
    registry: WorkerRegistry | None,
) -> RunEstimate:
    """What ``body`` would cost if submitted now, checked exactly as its submission would be (the same
    422s); nothing is stored or queued."""
    checked = check_run(session, storage, settings, tenant, body)
    if body.downstream:
        check_downstream(session, tenant, body.downstream)
    workers = Workers(measured_runs(session))
    own = own_estimate(
        session,
        workers,
        checked.hyperparameters,
        checked.corpus,
        checked.base,
        eval_corpus=checked.eval_corpus,
        reference_corpus=checked.reference_corpus,
        replay_corpus=checked.replay_corpus,
    )
    model = QueueModel.build(session, settings, storage, workers, registry)
    queue = model.ahead_of_new()
    return RunEstimate(
        exact=own.exact,
        analysis_id=own.analysis_id,
        train_instances=own.steps.epoch_instances,
        steps_per_epoch=own.steps.steps_per_epoch,
        epochs=own.steps.epochs,
        steps=own.steps.total_steps,
        tokens_per_step=own.steps.tokens_per_step,
        tokens=own.steps.tokens,
        evaluations=own.evaluations,
        evaluation_tokens=own.evaluation_tokens,
        throughput=own.throughput,
        seconds_per_step=round(own.seconds_per_step, 4),
        training_seconds=round(own.training_seconds, 1),
        evaluation_seconds=round(own.evaluation_seconds, 1),
        startup_seconds=round(own.startup_seconds, 1),
        startup_source=own.startup_source,
        total_seconds=round(own.total_seconds, 1),
        queue=queue,
        eta_seconds=round(queue.wait_seconds + own.total_seconds, 1),
    )


def own_estimate(
    session: Session,
    workers: Workers,
    h: Hyperparameters,
    corpus: Corpus,
    base: ResolvedBaseModel | None,
    *,
    eval_corpus: Corpus | None = None,
    reference_corpus: Corpus | None = None,
    replay_corpus: Corpus | None = None,
) -> OwnEstimate:
    """The figures of a run with ``h`` on ``corpus`` from ``base`` (None: a base that cannot be resolved
    any more; BERT-base's size is assumed, as for an ``hf:`` model). A reference corpus that is also the
    replay corpus is evaluated on its held-out part only (``worker.pretraining.engine``'s replay)."""
    config = h.preparation()
    analysis = (
        cached_analysis(session, corpus, base, config)
        if base is not None and eval_corpus is None and h.add_domain_tokens == 0
        else None
    )
    preparation_bytes = 0
    if analysis is not None and analysis.result is not None:
        figures = CorpusAnalysis.model_validate(analysis.result)
        train_instances, mean_length = figures.train.instances, figures.train.mean_length
        evaluation_tokens = figures.eval.tokens if figures.eval is not None else 0
    else:
        approximate = approximate_corpus(
            config,
            characters=_characters(corpus),
            documents=corpus.documents,
            held_out_documents=_held_out_documents(h, corpus, eval_corpus is not None),
        )
        train_instances, mean_length = approximate.train.instances, approximate.train.mean_length
        evaluation_tokens = approximate.eval_tokens
        preparation_bytes += corpus.bytes
    shared = (
        reference_corpus is not None and replay_corpus is not None and replay_corpus.id == reference_corpus.id
    )
    for other in (eval_corpus, reference_corpus):
        if other is not None:  # evaluated whole, or its held-out part when it is also the replay corpus
            evaluated = _held_out_documents(h, other, False) if shared and other is reference_corpus else None
            part = approximate_corpus(
                config,
                characters=_characters(other),
                documents=other.documents,
                held_out_documents=other.documents if evaluated is None else evaluated,
            )
            evaluation_tokens += part.eval_tokens
            preparation_bytes += other.bytes
    if replay_corpus is not None and not shared:  # prepared once when shared
        preparation_bytes += replay_corpus.bytes
    steps = step_figures(h, train_instances, mean_length)
    evaluations = evaluation_passes(h, steps.total_steps)
    shape = (_model_shape(base) if base is not None else None) or DEFAULT_MODEL_SHAPE
    throughput = workers.throughput(shape, max_seq_length=h.max_seq_length, masked_lm_prob=h.masked_lm_prob)
    measured = workers.startup_seconds()
    startup: tuple[float, Literal["measured", "default"]] = (
        (measured[0], "measured")
        if measured is not None
        else (workers.default_startup_seconds() + preparation_bytes / PREPARATION_BYTES_PER_SECOND, "default")
    )
    seconds = run_seconds(
        steps=steps.total_steps,
        tokens_per_step=steps.tokens_per_step,
        tokens_per_second=throughput.tokens_per_second,
        evaluation_tokens=evaluation_tokens,
        evaluations=evaluations,
        startup_seconds=startup[0],
    )
    return OwnEstimate(
        exact=analysis is not None,
        analysis_id=analysis.id if analysis is not None else None,
        steps=steps,
        evaluations=evaluations,
        evaluation_tokens=evaluation_tokens,
        throughput=throughput,
        seconds_per_step=seconds["seconds_per_step"],
        training_seconds=seconds["training_seconds"],
        evaluation_seconds=seconds["evaluation_seconds"],
        startup_seconds=startup[0],
        startup_source=startup[1],
    )


def _characters(corpus: Corpus) -> int:
    """The corpus's characters of text as counted at upload (its bytes for a corpus stored without them)."""
    characters = (corpus.stats or {}).get("characters")
    return characters if isinstance(characters, int) else corpus.bytes


def _held_out_documents(h: Hyperparameters, corpus: Corpus, eval_corpus: bool) -> int:
    try:
        held = held_out_split(
            h,
            documents=corpus.documents,
            sentences=corpus.sentences if h.sentence_splitting == "none" else None,
            eval_corpus=eval_corpus,
        )
    except PreparationError:  # refused at submission; an estimate of a stored run goes on
        return 0
    return held.documents


def _model_shape(base: ResolvedBaseModel) -> ModelShape | None:
    if base.local_path is None:
        return None
    config = base.local_path / "config.json"
    try:
        stat = config.stat()
    except OSError:
        return None
    return _shape_of(str(base.local_path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _shape_of(directory: str, _mtime_ns: int, _size: int) -> ModelShape | None:
    """The shape of the model in ``directory``, read once per version of its config.json."""
    try:
        return ModelShape.from_config(read_config(Path(directory)))
    except BaseModelError:
        return None


# -- the queue ------------------------------------------------------------------------------------------


@dataclass
class QueueModel:
    """The runs in the workers' hands and those queued, with what each still needs, over ``slots``
    training slots."""

    in_hands: list[tuple[Run, float | None]]  # (run, remaining seconds; None: not known)
    queued: list[tuple[Run, float | None]]  # in the order the queue serves them, with their own time
    slots: int
    slots_known: bool

    @classmethod
    def build(
        cls,
        session: Session,
        settings: Settings,
        storage: Storage,
        workers: Workers,
        registry: WorkerRegistry | None,
    ) -> QueueModel:
        runs = repository.active_runs(session, limit=MAX_QUEUE)
        now = utcnow()
        estimator = _RunEstimator(session, settings, storage, workers)
        in_hands = [(run, _remaining(run, estimator, now)) for run in runs if run.status != RunStatus.QUEUED]
        queued = [(run, estimator.total_seconds(run)) for run in runs if run.status == RunStatus.QUEUED]
        announced = registry.training_slots() if registry is not None else None
        slots = max(announced or 1, len(in_hands), 1)
        return cls(in_hands=in_hands, queued=queued, slots=slots, slots_known=announced is not None)

    def waits(self) -> tuple[dict[str, float], float]:
        """The wait of each queued run (seconds until a slot takes it), and that of a run queued now."""
        free = [remaining or 0.0 for _, remaining in self.in_hands]
        free += [0.0] * (self.slots - len(free))
        heapq.heapify(free)
        waits: dict[str, float] = {}
        for run, own in self.queued:
            start = heapq.heappop(free)
            waits[run.id] = start
            heapq.heappush(free, start + (own or 0.0))
        return waits, free[0]

    def ahead_of_new(self) -> QueueAhead:
        _, wait = self.waits()
        return QueueAhead(
            runs=len(self.in_hands) + len(self.queued),
            wait_seconds=round(wait, 1),
            workers=self.slots,
            workers_known=self.slots_known,
        )


class _RunEstimator:
    """Own estimates of stored runs (each resolved with its tenant), memoized for one request."""

    def __init__(self, session: Session, settings: Settings, storage: Storage, workers: Workers) -> None:
        self.session, self.settings, self.storage, self.workers = session, settings, storage, workers
        self._totals: dict[str, float | None] = {}

    def total_seconds(self, run: Run) -> float | None:
        if run.id not in self._totals:
            self._totals[run.id] = self._estimate(run)
        return self._totals[run.id]

    def _estimate(self, run: Run) -> float | None:
        session = self.session
        corpus = session.get(Corpus, run.corpus_id) if run.corpus_id else None
        tenant = session.get(Tenant, run.tenant_id)
        if corpus is None or tenant is None:
            return None
        try:
            h = Hyperparameters.model_validate(run.hyperparameters)
        except ValueError:
            return None
        try:
            base: ResolvedBaseModel | None = resolve_base_model(
                session, tenant, run.base_model, settings=self.settings, storage=self.storage
            )
        except AppError:
            base = None
        eval_corpus = session.get(Corpus, run.eval_corpus_id) if run.eval_corpus_id else None
        reference = session.get(Corpus, run.reference_corpus_id) if run.reference_corpus_id else None
        replay = session.get(Corpus, run.replay_corpus_id) if run.replay_corpus_id else None
        own = own_estimate(
            session,
            self.workers,
            h,
            corpus,
            base,
            eval_corpus=eval_corpus,
            reference_corpus=reference,
            replay_corpus=replay,
        )
        return own.total_seconds


def _remaining(run: Run, estimator: _RunEstimator, now: datetime) -> float | None:
    """Seconds a run in a worker's hands still needs: its own pace once running, else its own estimate less
    the time it has spent; 0 while it is being cancelled (it stops at its next step)."""
    if run.status == RunStatus.CANCELLING:
        return 0.0
    pace = (run.progress or {}).get("eta_seconds")
    if run.status == RunStatus.RUNNING and isinstance(pace, (int, float)):
        return float(pace)
    total = estimator.total_seconds(run)
    if total is None:
        return None
    spent = (now - run.started_at).total_seconds() if run.started_at else 0.0
    return max(0.0, total - spent)


def queue_waits(model: QueueModel) -> dict[str, float]:
    """The wait of each queued run of ``model`` (seconds)."""
    return model.waits()[0]


def run_etas(
    session: Session,
    settings: Settings,
    storage: Storage,
    runs: Sequence[Run],
    *,
    registry: WorkerRegistry | None,
) -> dict[str, float | None]:
    """``eta_seconds`` of those of ``runs`` that are queued or preparing (see the module docstring; a
    running run's is its progress's: :meth:`app.runs.schemas.RunPublic.from_run`). The queue is modelled
    only when there is one of them, and at most every ``registry.max_age_seconds`` in this process while
    the last model's figures hold every one of them in its status (a run queued or taken since is
    modelled afresh); a failure to model it leaves them unknown, never fails the read."""
    waiting = [run for run in runs if run.status in (RunStatus.QUEUED, RunStatus.PREPARING)]
    if not waiting:
        return {}
    figures = _cached_figures(registry, waiting)
    if figures is None:
        try:
            with session.begin_nested():  # a failed query leaves the request's transaction usable
                model = QueueModel.build(
                    session, settings, storage, Workers(measured_runs(session)), registry
                )
        except Exception:
            logger.exception("estimating the queue failed")
            return {}
        figures = _QueueFigures(
            waits=queue_waits(model),
            totals={run.id: own for run, own in model.queued},
            remaining={run.id: left for run, left in model.in_hands},
        )
        if registry is not None:
            registry.queue_figures = (time.monotonic(), figures)
    waits, totals, remaining = figures.waits, figures.totals, figures.remaining
    etas: dict[str, float | None] = {}
    for run in waiting:
        if run.status == RunStatus.QUEUED:
            own, wait = totals.get(run.id), waits.get(run.id)
            etas[run.id] = round(wait + own, 1) if own is not None and wait is not None else None
        else:
            left = remaining.get(run.id)
            etas[run.id] = round(left, 1) if left is not None else None
    return etas


@dataclass(frozen=True)
class _QueueFigures:
    """What ``eta_seconds`` needs of a queue model, by run id: the queued runs' waits and own totals, the
    remaining seconds of those in hands."""

    waits: dict[str, float]
    totals: dict[str, float | None]
    remaining: dict[str, float | None]


def _cached_figures(registry: WorkerRegistry | None, waiting: Sequence[Run]) -> _QueueFigures | None:
    """The figures ``registry`` keeps, when younger than its ``max_age_seconds`` and holding every run of
    ``waiting`` in its status (queued: a wait; preparing: a remaining time)."""
    if registry is None or registry.queue_figures is None:
        return None
    built_at, figures = registry.queue_figures
    if not isinstance(figures, _QueueFigures) or time.monotonic() - built_at >= registry.max_age_seconds:
        return None
    for run in waiting:
        held = figures.waits if run.status == RunStatus.QUEUED else figures.remaining
        if run.id not in held:
            return None
    return figures
