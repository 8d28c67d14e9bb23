"""Housekeeping: a thread in the API process and in each worker's main process that, every period, keeps
runs from being lost or stuck:

- **the reaper** (:func:`app.runs.lifecycle.reap_expired`): a run whose holder's heartbeat is older than
  ``HEARTBEAT_TIMEOUT_SECONDS`` (its worker was killed, or lost the database) is queued again to resume
  from its newest checkpoint while attempts are left, failed after ``MAX_ATTEMPTS``, or cancelled if it
  was being cancelled; its task is sent at once (nothing waits for the broker's visibility timeout);
- **the sweep of runs left queued** (:func:`app.runs.lifecycle.resend_stale_queued`): the task of a run
  still queued ``REQUEUE_AFTER_SECONDS`` after its last send is sent again (a send that failed, a lost
  message);
- the same two chores for evaluations (:mod:`app.evaluations.lifecycle`): an evaluation whose holder
  stopped answering is queued again to start over, failed, or cancelled; one left queued is sent again;
- **the note of runs waiting for a worker** (:func:`app.runs.routing.note_waiting_runs`): a queued run whose
  queue no live worker serves gets one ``waiting_for_worker`` event per attempt;
- any further chores its process adds (the API's sweep of abandoned upload files).

Every process may run it at once: rows are taken with ``SKIP LOCKED`` and every change is a conditional
transition, so two reapers never act twice. The API runs it too, so that a run whose only worker died
still ends (failed, or cancelled) with no worker left. The period scales with the settings (a quarter of
the heartbeat timeout, at most a minute), so a test can make it seconds.

It has its own database engine without a pool (nothing kept open across a prefork pool's forks), its
own Celery client and live-stream client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial

from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope
from app.estimates.workers import WorkerRegistry
from app.evaluations import lifecycle as evaluation_lifecycle
from app.evaluations.states import EvaluationStatus
from app.queue import Enqueuer, RunEnqueuer, create_celery, enqueue_evaluation
from app.runs import lifecycle
from app.runs.live import LivePublisher, create_redis
from app.runs.routing import RunSender, note_waiting_runs
from app.runs.states import RunStatus
from app.storage import Storage, get_storage

__all__ = ["MAX_PERIOD_SECONDS", "Chore", "Housekeeper", "housekeeping_period", "start_housekeeping"]

logger = logging.getLogger(__name__)

MAX_PERIOD_SECONDS = 60.0
# A chore: one pass of some periodic work; returns what it did, for the log (empty: nothing).
Chore = Callable[[], Sequence[str]]


def housekeeping_period(settings: Settings) -> float:
    """Seconds between two passes: a quarter of the heartbeat timeout (a lost run is taken back at most
    1.25 timeouts after its last heartbeat), no longer than the requeue delay, at most a minute."""
    period = min(MAX_PERIOD_SECONDS, settings.heartbeat_timeout_seconds / 4)
    if settings.requeue_after_seconds > 0:
        period = min(period, settings.requeue_after_seconds)
    return period


class Housekeeper:
    """The chores of runs (reaping, re-sending; noting those waiting for a worker when ``registry`` is
    given) for ``settings``, those of evaluations when ``enqueue_evaluation`` is given, plus ``extra``
    chores."""

    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        storage: Storage,
        enqueue: RunEnqueuer,
        publisher: LivePublisher,
        *,
        extra: Sequence[tuple[str, Chore]] = (),
        every_seconds: float | None = None,
        enqueue_evaluation: Enqueuer | None = None,
        registry: WorkerRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.session_factory = session_factory
        self.storage = storage
        self.enqueue = enqueue
        self.enqueue_evaluation = enqueue_evaluation
        self.publisher = publisher
        self.every_seconds = every_seconds if every_seconds is not None else housekeeping_period(settings)
        evaluation_chores: list[tuple[str, Chore]] = [
            ("reap evaluations whose worker stopped answering", self.reap_evaluations),
            ("send again the tasks of evaluations left queued", self.resend_evaluations),
        ]
        self.chores: list[tuple[str, Chore]] = [
            ("reap runs whose worker stopped answering", self.reap),
            ("send again the tasks of runs left queued", self.resend),
            *(evaluation_chores if enqueue_evaluation is not None else []),
            *([("note runs waiting for a worker", self.note_waiting)] if registry is not None else []),
            *extra,
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bertpt-housekeeping", daemon=True)

    def reap(self) -> list[str]:
        """Take back the runs whose holder stopped answering; send the task of those queued again and
        publish what happened, once committed. Returns the run ids."""
        with session_scope(self.session_factory) as session:
            reaped = lifecycle.reap_expired(
                session,
                self.storage,
                timeout=timedelta(seconds=self.settings.heartbeat_timeout_seconds),
                max_attempts=self.settings.max_attempts,
            )
        for run in reaped:
            for message in run.messages:
                self.publisher.publish(run.run_id, message)
            if run.status == RunStatus.QUEUED:
                # A failed send is not lost: the run is queued, and the sweep sends it again in time.
                try:
                    self.enqueue(run.run_id)
                except Exception as exc:
                    logger.warning("run %s requeued; its task could not be sent yet (%s)", run.run_id, exc)
        return [f"{run.run_id} -> {run.status.value}" for run in reaped]

    def resend(self) -> list[str]:
        if self.settings.requeue_after_seconds <= 0:
            return []
        with session_scope(self.session_factory) as session:
            return lifecycle.resend_stale_queued(
                session,
                older_than=timedelta(seconds=self.settings.requeue_after_seconds),
                enqueue=self.enqueue,
            )

    def note_waiting(self) -> list[str]:
        assert self.registry is not None
        with session_scope(self.session_factory) as session:
            return note_waiting_runs(session, self.settings, self.registry)

    def reap_evaluations(self) -> list[str]:
        """Take back the evaluations whose holder stopped answering; send the task of those queued again
        once committed. Returns ``"<id> -> <status>"`` of each."""
        assert self.enqueue_evaluation is not None
        with session_scope(self.session_factory) as session:
            reaped = evaluation_lifecycle.reap_expired(
                session,
                timeout=timedelta(seconds=self.settings.heartbeat_timeout_seconds),
                max_attempts=self.settings.max_attempts,
            )
        for evaluation in reaped:
            if evaluation.status == EvaluationStatus.QUEUED:
                try:
                    self.enqueue_evaluation(evaluation.evaluation_id)
                except Exception as exc:  # queued: the sweep sends it again in time
                    logger.warning(
                        "evaluation %s requeued; its task could not be sent yet (%s)",
                        evaluation.evaluation_id,
                        exc,
                    )
        return [f"{evaluation.evaluation_id} -> {evaluation.status.value}" for evaluation in reaped]

    def resend_evaluations(self) -> list[str]:
        assert self.enqueue_evaluation is not None
        if self.settings.requeue_after_seconds <= 0:
            return []
        with session_scope(self.session_factory) as session:
            return evaluation_lifecycle.resend_stale_queued(
                session,
                older_than=timedelta(seconds=self.settings.requeue_after_seconds),
                enqueue=self.enqueue_evaluation,
            )

    def run_once(self) -> dict[str, list[str]]:
        """One pass of every chore; a chore that fails (database or broker unreachable) is logged and
        tried again at the next pass. Returns what each chore did."""
        done: dict[str, list[str]] = {}
        for name, chore in self.chores:
            try:
                done[name] = list(chore())
            except Exception as exc:
                logger.warning(
                    "housekeeping: %s failed (%s: %s); next time again", name, type(exc).__name__, exc
                )
                continue
            if done[name]:
                logger.warning("housekeeping: %s: %s", name, ", ".join(done[name]))
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self.run_once()

    def start(self) -> Housekeeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def start_housekeeping(settings: Settings, *, extra: Sequence[tuple[str, Chore]] = ()) -> Housekeeper:
    """Start the housekeeping of a process configured by ``settings`` (its first pass after one period)."""
    engine = create_db_engine(settings.database_url, poolclass=NullPool)
    celery = create_celery(settings)
    session_factory = create_session_factory(engine)
    redis_client = create_redis(settings.redis_url, socket_timeout=10)
    housekeeper = Housekeeper(
        settings,
        session_factory,
        get_storage(settings),
        RunSender(settings, session_factory, celery),
        LivePublisher(redis_client),
        extra=extra,
        enqueue_evaluation=partial(enqueue_evaluation, celery=celery),
        registry=WorkerRegistry(redis_client, settings),
    )
    return housekeeper.start()
