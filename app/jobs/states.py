"""A job's statuses and transitions as one table, and what is derived from it.

A job (a run, an evaluation) is held by one *attempt* at a time, under a lease (its heartbeat). Every
status change is one :class:`Transition` of its table: the worker's conditional UPDATEs take their
``WHERE status IN (...)`` and their new status from it (:meth:`StateMachine.sources`,
:meth:`StateMachine.target`), and the API's cancel looks its transition up in it
(:meth:`StateMachine.transition`). Terminal and active statuses, and the statuses in which a worker holds
a job, are derived from the table, never listed twice.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "BY_CLIENT",
    "BY_WORKER",
    "BY_WORKER_OR_REAPER",
    "Actor",
    "StateMachine",
    "Transition",
    "Trigger",
]

S = TypeVar("S", bound=enum.StrEnum)


class Trigger(enum.StrEnum):
    """What moves a job from one status to the next (a kind of job uses some of them)."""

    CLAIM = "claim"  # a worker takes the queued job (attempt + 1)
    START_TRAINING = "start_training"  # a run's data is prepared and its model loaded: the first step begins
    CANCEL = "cancel"  # its owner asks to cancel it
    SUCCEED = "succeed"  # the work is done and its output recorded
    FAIL = "fail"  # it could not start or go on (or every attempt was interrupted)
    STOP = "stop"  # it stopped on a cancel request (or its holder is gone while it was being cancelled)
    RETRY = "retry"  # the attempt was interrupted (process killed, worker lost): queued for the next one
    RESUME = "resume"  # its owner continues a failed or cancelled run from its newest checkpoint


class Actor(enum.StrEnum):
    CLIENT = "client"  # through the API, on the job's owner's request
    WORKER = "worker"  # the worker that holds the job
    REAPER = "reaper"  # the housekeeping that finds a holder whose heartbeat stopped


# Who may make a transition: its owner (cancel, resume); the worker that holds the job; that worker, or the
# reaper for a holder that is gone (fail, stop, retry).
BY_CLIENT = frozenset({Actor.CLIENT})
BY_WORKER = frozenset({Actor.WORKER})
BY_WORKER_OR_REAPER = frozenset({Actor.WORKER, Actor.REAPER})


@dataclass(frozen=True)
class Transition(Generic[S]):
    source: S
    trigger: Trigger
    target: S
    actors: frozenset[Actor]


class StateMachine(Generic[S]):
    """The transitions of one kind of job over its ``statuses``, and the sets derived from them:

    - ``terminal``: nothing but its owner's ``resume`` leaves these (the job has ended; its inputs are free);
    - ``active``: the others (the job may still read its inputs: they cannot be deleted);
    - ``held``: where a worker holds the job (those ``fail`` leaves): its writes are accepted only then,
      fenced by the attempt.
    """

    def __init__(self, statuses: Iterable[S], transitions: Iterable[Transition[S]]) -> None:
        self.statuses = frozenset(statuses)
        self.transitions = tuple(transitions)
        self._by_source = {(t.source, t.trigger): t for t in self.transitions}
        if len(self._by_source) != len(self.transitions):
            raise ValueError("a (status, trigger) pair has two transitions")
        self.terminal = frozenset(
            self.statuses - {t.source for t in self.transitions if t.trigger != Trigger.RESUME}
        )
        self.active = frozenset(self.statuses - self.terminal)
        self.held = frozenset(t.source for t in self.transitions if t.trigger == Trigger.FAIL)

    def transition(self, source: S, trigger: Trigger) -> Transition[S] | None:
        """The transition ``trigger`` makes from ``source``; None when it makes none (the trigger does
        nothing to a job in that status)."""
        return self._by_source.get((source, trigger))

    def sources(self, trigger: Trigger) -> frozenset[S]:
        """The statuses ``trigger`` moves a job out of (the WHERE of its conditional UPDATE)."""
        return frozenset(t.source for t in self.transitions if t.trigger == trigger)

    def target(self, trigger: Trigger) -> S:
        """The one status ``trigger`` leads to; ValueError for a trigger whose target depends on the source
        (``cancel``: look it up with :meth:`transition`)."""
        targets = {t.target for t in self.transitions if t.trigger == trigger}
        if len(targets) != 1:
            raise ValueError(f"{trigger} leads to {sorted(targets)}: look the transition up by its source")
        return next(iter(targets))
