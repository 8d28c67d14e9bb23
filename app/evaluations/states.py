"""An evaluation's statuses and the one table of their transitions (the machinery of runs,
:mod:`app.jobs.states`).

::

    queued ──claim──▶ running ──succeed──▶ succeeded
      │                 │  │ ──fail─────▶ failed
      │ cancel          │  └──retry──▶ queued       (its attempt was interrupted: the next starts over)
      ▼                 ▼ cancel
    cancelled       cancelling ──stop──▶ cancelled  (or succeed / fail, when its last fit ended first)

An evaluation keeps no checkpoint: an interrupted attempt is followed by one that starts over (the seeds
make it the same comparison). The reaper (:mod:`app.housekeeping`) retries, fails or stops an evaluation
whose holder's heartbeat stopped, as it does for runs. There is no ``resume``: submit it again.
"""

from __future__ import annotations

import enum

from app.jobs.states import (
    BY_CLIENT,
    BY_WORKER,
    BY_WORKER_OR_REAPER,
    StateMachine,
    Transition,
    Trigger,
)

__all__ = [
    "ACTIVE_EVALUATION_STATUSES",
    "EVALUATION_STATES",
    "TERMINAL_EVALUATION_STATUSES",
    "EvaluationStatus",
]


class EvaluationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_EVALUATION_STATUSES


_S = EvaluationStatus
_WORKING = (_S.RUNNING, _S.CANCELLING)

EVALUATION_STATES = StateMachine(
    EvaluationStatus,
    (
        Transition(_S.QUEUED, Trigger.CLAIM, _S.RUNNING, BY_WORKER),
        Transition(_S.QUEUED, Trigger.CANCEL, _S.CANCELLED, BY_CLIENT),
        Transition(_S.RUNNING, Trigger.CANCEL, _S.CANCELLING, BY_CLIENT),
        *(Transition(status, Trigger.SUCCEED, _S.SUCCEEDED, BY_WORKER) for status in _WORKING),
        *(Transition(status, Trigger.FAIL, _S.FAILED, BY_WORKER_OR_REAPER) for status in _WORKING),
        Transition(_S.RUNNING, Trigger.STOP, _S.CANCELLED, BY_WORKER),
        Transition(_S.CANCELLING, Trigger.STOP, _S.CANCELLED, BY_WORKER_OR_REAPER),
        # An evaluation asked to cancel is not retried: it is stopped.
        Transition(_S.RUNNING, Trigger.RETRY, _S.QUEUED, BY_WORKER_OR_REAPER),
    ),
)
# Nothing leaves these: the evaluation has ended (its dataset and models are free).
TERMINAL_EVALUATION_STATUSES = EVALUATION_STATES.terminal
# An evaluation in one of these may still read its dataset and models: they cannot be deleted.
ACTIVE_EVALUATION_STATUSES = EVALUATION_STATES.active
