"""The event types a webhook can subscribe to, derived from the terminal statuses of runs and evaluations
(one home: :mod:`app.runs.states`, :mod:`app.evaluations.states`), and the patterns that select them.

An event type is ``<kind>.<terminal status>``: ``run.succeeded``, ``run.failed``, ``run.cancelled``,
``evaluation.succeeded``... A webhook's ``events`` are exact types or ``<kind>.*`` (every type of a kind)
or ``*`` (all of them).
"""

from __future__ import annotations

import enum

from app.evaluations.states import TERMINAL_EVALUATION_STATUSES
from app.runs.states import TERMINAL_RUN_STATUSES

__all__ = ["EVENT_TYPES", "SUBSCRIPTION_PATTERNS", "EventKind", "event_type", "matches", "pattern_error"]


class EventKind(enum.StrEnum):
    RUN = "run"
    EVALUATION = "evaluation"


_TERMINAL: dict[EventKind, frozenset[enum.StrEnum]] = {
    EventKind.RUN: TERMINAL_RUN_STATUSES,
    EventKind.EVALUATION: TERMINAL_EVALUATION_STATUSES,
}

EVENT_TYPES: tuple[str, ...] = tuple(
    sorted(f"{kind}.{status}" for kind, statuses in _TERMINAL.items() for status in statuses)
)


def event_type(kind: EventKind, status: enum.StrEnum) -> str:
    """``run.succeeded`` for a run that reached ``succeeded``; ValueError for a status that is not
    terminal (no event is sent for it)."""
    if status not in _TERMINAL[kind]:
        raise ValueError(f"{kind} status {status!s} is not terminal: no webhook event")
    return f"{kind}.{status}"


def matches(pattern: str, event: str) -> bool:
    """Whether a subscription pattern (an exact type, ``<kind>.*`` or ``*``) selects ``event``."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event.startswith(pattern[:-1])
    return pattern == event


# What a webhook's ``events`` may hold: every pattern that selects an event type.
SUBSCRIPTION_PATTERNS: tuple[str, ...] = ("*", *(f"{kind}.*" for kind in EventKind), *EVENT_TYPES)


def pattern_error(pattern: str) -> str | None:
    """Why ``pattern`` is not one of :data:`SUBSCRIPTION_PATTERNS` (a typo), or None."""
    if pattern in SUBSCRIPTION_PATTERNS:
        return None
    return f"{pattern!r} selects no event; use one of {', '.join(SUBSCRIPTION_PATTERNS)}"
