"""A run's statuses and the one table of their transitions.

::

    queued ──claim──▶ preparing ──start_training──▶ running
      │                  │                             │
      │ cancel           │ cancel                      │ cancel
      ▼                  ▼                             ▼
    cancelled        cancelling ◀──────────────────────┘

    preparing | running | cancelling ──succeed──▶ succeeded
                                     ──fail─────▶ failed
                                     ──stop─────▶ cancelled   (stopped on a cancel request)
    preparing | running ──retry──▶ queued        (its attempt was interrupted: another one resumes it)
    failed | cancelled ──resume──▶ queued        (its owner continues it from its newest checkpoint)

A run is held by one *attempt* at a time (``attempt``, +1 at every claim) under a lease, its heartbeat.
The worker that holds it makes the worker's transitions; the reaper (:mod:`app.housekeeping`) makes them
for a holder whose heartbeat stopped: ``retry`` while attempts are left, else ``fail``; ``stop`` for a run
in ``cancelling``.

Every status change of a run is one row of :data:`TRANSITIONS`: the worker's conditional UPDATEs
(:mod:`app.runs.lifecycle`) take their ``WHERE status IN (...)`` and their new status from it, and the
API's cancel (:func:`app.runs.service.cancel_run`) looks its transition up in it. Terminal and active
statuses, and the statuses in which a worker holds a run, are derived from the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "TERMINAL_RUN_STATUSES",
    "TRANSITIONS",
    "WORKER_HELD_STATUSES",
    "Actor",
    "RunStatus",
    "Transition",
    "Trigger",
    "sources",
    "target",
    "transition",
]


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


class Trigger(enum.StrEnum):
    """What moves a run from one status to the next."""

    CLAIM = "claim"  # a worker takes the queued run (attempt + 1)
    START_TRAINING = "start_training"  # data prepared and model loaded: the first step begins
    CANCEL = "cancel"  # its owner asks to cancel it
    SUCCEED = "succeed"  # training completed (or stopped at max_runtime_seconds) and the model is exported
    FAIL = "fail"  # training could not start or go on (or every attempt was interrupted)
    STOP = "stop"  # training stopped on a cancel request, with a checkpoint (or its holder is gone)
    RETRY = "retry"  # the attempt was interrupted (process killed, worker lost): queued for the next one
    RESUME = "resume"  # its owner continues a failed or cancelled run from its newest checkpoint


class Actor(enum.StrEnum):
    CLIENT = "client"  # through the API, on the run's owner's request
    WORKER = "worker"  # the worker that holds the run
    REAPER = "reaper"  # the housekeeping that finds a holder whose heartbeat stopped


@dataclass(frozen=True)
class Transition:
    source: RunStatus
    trigger: Trigger
    target: RunStatus
    actors: frozenset[Actor]


_S = RunStatus
_WORKING = (_S.PREPARING, _S.RUNNING, _S.CANCELLING)
_CLIENT = frozenset({Actor.CLIENT})
_WORKER = frozenset({Actor.WORKER})
_WORKER_OR_REAPER = frozenset({Actor.WORKER, Actor.REAPER})

TRANSITIONS: tuple[Transition, ...] = (
    Transition(_S.QUEUED, Trigger.CLAIM, _S.PREPARING, _WORKER),
    Transition(_S.PREPARING, Trigger.START_TRAINING, _S.RUNNING, _WORKER),
    Transition(_S.QUEUED, Trigger.CANCEL, _S.CANCELLED, _CLIENT),
    Transition(_S.PREPARING, Trigger.CANCEL, _S.CANCELLING, _CLIENT),
    Transition(_S.RUNNING, Trigger.CANCEL, _S.CANCELLING, _CLIENT),
    # A run asked to cancel may still end otherwise: its last step completed it, or it failed.
    *(Transition(status, Trigger.SUCCEED, _S.SUCCEEDED, _WORKER) for status in _WORKING),
    # The reaper fails a run whose every attempt was interrupted, and stops a run in cancelling whose
    # holder is gone (nobody is left to stop it).
    *(Transition(status, Trigger.FAIL, _S.FAILED, _WORKER_OR_REAPER) for status in _WORKING),
    Transition(_S.PREPARING, Trigger.STOP, _S.CANCELLED, _WORKER),
    Transition(_S.RUNNING, Trigger.STOP, _S.CANCELLED, _WORKER),
    Transition(_S.CANCELLING, Trigger.STOP, _S.CANCELLED, _WORKER_OR_REAPER),
    # A run asked to cancel is not retried: it is stopped.
    Transition(_S.PREPARING, Trigger.RETRY, _S.QUEUED, _WORKER_OR_REAPER),
    Transition(_S.RUNNING, Trigger.RETRY, _S.QUEUED, _WORKER_OR_REAPER),
    Transition(_S.FAILED, Trigger.RESUME, _S.QUEUED, _CLIENT),
    Transition(_S.CANCELLED, Trigger.RESUME, _S.QUEUED, _CLIENT),
)
_BY_SOURCE = {(t.source, t.trigger): t for t in TRANSITIONS}

# Nothing but its owner's ``resume`` leaves these: the run has ended (its stream ends, its inputs are free).
TERMINAL_RUN_STATUSES = frozenset(
    set(RunStatus) - {t.source for t in TRANSITIONS if t.trigger != Trigger.RESUME}
)
# A run in one of these may still read its corpora and base checkpoint: they cannot be deleted.
ACTIVE_RUN_STATUSES = frozenset(set(RunStatus) - TERMINAL_RUN_STATUSES)
# Where a worker holds the run (it may end it): its writes are accepted only then, fenced by the attempt.
WORKER_HELD_STATUSES = frozenset(t.source for t in TRANSITIONS if t.trigger == Trigger.FAIL)


def transition(source: RunStatus, trigger: Trigger) -> Transition | None:
    """The transition ``trigger`` makes from ``source``; None when it makes none (the trigger does nothing
    to a run in that status)."""
    return _BY_SOURCE.get((source, trigger))


def sources(trigger: Trigger) -> frozenset[RunStatus]:
    """The statuses ``trigger`` moves a run out of (the WHERE of its conditional UPDATE)."""
    return frozenset(t.source for t in TRANSITIONS if t.trigger == trigger)


def target(trigger: Trigger) -> RunStatus:
    """The one status ``trigger`` leads to; ValueError for a trigger whose target depends on the source
    (``cancel``: look it up with :func:`transition`)."""
    targets = {t.target for t in TRANSITIONS if t.trigger == trigger}
    if len(targets) != 1:
        raise ValueError(f"{trigger} leads to {sorted(targets)}: look the transition up by its source")
    return next(iter(targets))
