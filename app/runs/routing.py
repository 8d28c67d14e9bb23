"""Which queue a run's task goes to, and why a queued run waits.

A run asks for a resource class and devices (``resources`` in its body, stored on the run; the default
class is ``DEFAULT_RESOURCE_CLASS``): its task goes to that class's queue, ``TRAINING_QUEUE.<class>``
(``training.cpu``, ``training.gpu``), which only the workers started for it consume (``bertpt worker
--queues training.gpu --gpus 0``). Every send of a run's task (the submission's, a resume's, a retry's, the
housekeeping's) goes through :class:`RunSender`, which reads the class from the run's row.

The workers announce the training queues they serve (:mod:`app.estimates.workers`). A queued run whose
queue no live worker serves (or none with the devices it asks for) says why: ``waiting_reason`` in the run
JSON (:func:`waiting_reasons`), and one ``waiting_for_worker`` event per attempt, recorded by the
housekeeping (:func:`note_waiting_runs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from celery import Celery
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import session_scope
from app.estimates.workers import WorkerRegistry
from app.models import Run
from app.queue import enqueue_run
from app.runs import repository
from app.runs.events import RunEventType, add_event
from app.runs.schemas import RunResources
from app.runs.states import RunStatus

__all__ = ["RunSender", "note_waiting_runs", "run_queue", "waiting_reason", "waiting_reasons"]

MAX_NOTED = 100  # queued runs looked at per pass of the housekeeping


def run_queue(settings: Settings, run: Run) -> str:
    """The queue of ``run``'s task: ``TRAINING_QUEUE.<its class>``."""
    return RunResources.of(run, settings).queue(settings)


class RunSender:
    """Sends ``bertpt.runs.execute(run_id)`` to the queue of the run's resource class, read from its row
    in a short transaction of its own (a run that is gone: the default class's queue, where the task
    finds nothing to claim). A ``RunEnqueuer``: every process sends runs' tasks with one."""

    def __init__(self, settings: Settings, session_factory: Callable[[], Session], celery: Celery) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.celery = celery

    def __call__(self, run_id: str) -> str:
        """Send the task; returns its Celery task id."""
        with session_scope(self.session_factory) as session:
            stored = repository.resources_of(session, run_id)
        resources = (
            RunResources.model_validate(stored)
            if stored
            else RunResources(resource_class=self.settings.default_resource_class)
        )
        return enqueue_run(run_id, queue=resources.queue(self.settings), celery=self.celery)


def waiting_reason(settings: Settings, registry: WorkerRegistry, resources: RunResources) -> str | None:
    """Why a run asking for ``resources`` is not taken: no live worker serves its queue, or none of those
    pinned to GPUs has as many as it asks for; None when a worker can take it, or when the workers'
    announcements cannot be read."""
    queue = resources.queue(settings)
    serving = registry.serving(queue)
    if serving is None:
        return None
    command = f"bertpt worker --queues {queue}"
    if resources.resource_class == "gpu":
        command += f" --gpus {','.join(str(device) for device in range(resources.devices))}"
    if not serving:
        return f"no worker serves {queue}; start one with `{command}`"
    pinned = [worker.devices for worker in serving if worker.devices is not None]
    if len(pinned) == len(serving) and max(pinned) < resources.devices:
        return (
            f"no worker of {queue} has {resources.devices} devices (the most any has: {max(pinned)}); start "
            f"one with `{command}`"
        )
    return None


def waiting_reasons(settings: Settings, registry: WorkerRegistry, runs: Sequence[Run]) -> dict[str, str]:
    """The ``waiting_reason`` of those of ``runs`` that are queued and wait for want of a worker, by id."""
    reasons: dict[str, str] = {}
    for run in runs:
        if run.status == RunStatus.QUEUED:
            reason = waiting_reason(settings, registry, RunResources.of(run, settings))
            if reason is not None:
                reasons[run.id] = reason
    return reasons


def note_waiting_runs(session: Session, settings: Settings, registry: WorkerRegistry) -> list[str]:
    """Record a ``waiting_for_worker`` event (a warning with the reason) on every queued run that waits for
    want of a worker and has none for its current attempt yet; returns their ids. A chore of the
    housekeeping: rows are locked with ``SKIP LOCKED``, so that several processes record it once."""
    queued = repository.queued_runs(session, limit=MAX_NOTED)
    reasons = waiting_reasons(settings, registry, queued)
    if not reasons:
        return []
    noted: list[str] = []
    for run in repository.queued_runs(session, limit=MAX_NOTED, ids=list(reasons), lock=True):
        last = repository.last_event_data(session, run.id, RunEventType.WAITING_FOR_WORKER)
        if last.get("attempt") == run.attempt:
            continue
        resources = RunResources.of(run, settings)
        add_event(
            session,
            run.id,
            RunEventType.WAITING_FOR_WORKER,
            f"waiting: {reasons[run.id]}",
            level="warning",
            data={
                "queue": resources.queue(settings),
                "resources": resources.model_dump(mode="json"),
                "attempt": run.attempt,
                "reason": reasons[run.id],
            },
        )
        noted.append(run.id)
    return noted
