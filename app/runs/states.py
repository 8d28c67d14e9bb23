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
statuses, and the statuses in which a worker holds a run, are derived from the table
(:class:`app.jobs.states.StateMachine`, which evaluations use too).
"""

from __future__ import annotations

import enum

from app.jobs.states import (
    BY_CLIENT,
    BY_WORKER,
    BY_WORKER_OR_REAPER,
    Actor,
    StateMachine,
    Transition,
    Trigger,
)

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "RUN_STATES",
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


_S = RunStatus
_WORKING = (_S.PREPARING, _S.RUNNING, _S.CANCELLING)

TRANSITIONS: tuple[Transition[RunStatus], ...] = (
    Transition(_S.QUEUED, Trigger.CLAIM, _S.PREPARING, BY_WORKER),
    Transition(_S.PREPARING, Trigger.START_TRAINING, _S.RUNNING, BY_WORKER),
    Transition(_S.QUEUED, Trigger.CANCEL, _S.CANCELLED, BY_CLIENT),
    Transition(_S.PREPARING, Trigger.CANCEL, _S.CANCELLING, BY_CLIENT),
    Transition(_S.RUNNING, Trigger.CANCEL, _S.CANCELLING, BY_CLIENT),
    # A run asked to cancel may still end otherwise: its last step completed it, or it failed.
    *(Transition(status, Trigger.SUCCEED, _S.SUCCEEDED, BY_WORKER) for status in _WORKING),
    # The reaper fails a run whose every attempt was interrupted, and stops a run in cancelling whose
    # holder is gone (nobody is left to stop it).
    *(Transition(status, Trigger.FAIL, _S.FAILED, BY_WORKER_OR_REAPER) for status in _WORKING),
    Transition(_S.PREPARING, Trigger.STOP, _S.CANCELLED, BY_WORKER),
    Transition(_S.RUNNING, Trigger.STOP, _S.CANCELLED, BY_WORKER),
    Transition(_S.CANCELLING, Trigger.STOP, _S.CANCELLED, BY_WORKER_OR_REAPER),
    # A run asked to cancel is not retried: it is stopped.
    Transition(_S.PREPARING, Trigger.RETRY, _S.QUEUED, BY_WORKER_OR_REAPER),
    Transition(_S.RUNNING, Trigger.RETRY, _S.QUEUED, BY_WORKER_OR_REAPER),
    Transition(_S.FAILED, Trigger.RESUME, _S.QUEUED, BY_CLIENT),
    Transition(_S.CANCELLED, Trigger.RESUME, _S.QUEUED, BY_CLIENT),
)
RUN_STATES = StateMachine(RunStatus, TRANSITIONS)

# Nothing but its owner's ``resume`` leaves these: the run has ended (its stream ends, its inputs are free).
TERMINAL_RUN_STATUSES = RUN_STATES.terminal
# A run in one of these may still read its corpora and base checkpoint: they cannot be deleted.
ACTIVE_RUN_STATUSES = RUN_STATES.active
# Where a worker holds the run (it may end it): its writes are accepted only then, fenced by the attempt.
WORKER_HELD_STATUSES = RUN_STATES.held
transition = RUN_STATES.transition
sources = RUN_STATES.sources
target = RUN_STATES.target
