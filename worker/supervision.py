"""Supervising a job's work in a child process: what a run's training and an evaluation share.

The child is started with ``spawn`` through billiard (Celery's fork of multiprocessing: a Celery pool
process counts as a daemon for the standard library's, which refuses to start children from it; and CUDA
does not survive ``fork``). It talks back through a queue; this process drains the queue, and about once
a second flushes what it learned with the job's heartbeat (its lease), which also reads whether the owner
asked to cancel. Then:

- a cancel request sets the child's stop event (the child stops cooperatively at its next check), or
  terminates it at once while it is in a stretch that never checks (``stop_at_once``);
- a lease that was not renewed for :data:`LEASE_MARGIN` of ``HEARTBEAT_TIMEOUT_SECONDS`` (the database
  unreachable), or a job taken away from this attempt, stops the child too, before the reaper can hand the
  job to another attempt: two attempts never work on one job at once;
- a child that does not stop within ``stop_grace_seconds`` of being asked is terminated.

The attempt's last write (its end, or its retry) must not be lost to a database that is briefly
unreachable: :func:`write_with_retries`.

Why a child rather than the Celery process itself: the supervisor stays free to renew the lease while the
child computes; a cancel, a lost lease or an out-of-memory kill ends the child without taking the worker
process (and its Celery connection) with it; and the memory the models took goes back to the system
when the child exits.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import billiard
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import session_scope
from worker.context import WorkerContext

__all__ = ["LEASE_MARGIN", "ChildEnd", "Lease", "supervise_child", "write_with_retries"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# The share of HEARTBEAT_TIMEOUT_SECONDS after which a supervisor that could not renew its lease stops its
# child (the reaper takes the job back after the whole timeout).
LEASE_MARGIN = 0.6
_RECEIVE_TIMEOUT_SECONDS = 0.2
_DRAIN_TIMEOUT_SECONDS = 0.5


class Lease(Protocol):
    """What a flush learned from the job's heartbeat (:class:`app.jobs.leases.Heartbeat`)."""

    @property
    def owned(self) -> bool: ...

    @property
    def cancel_requested(self) -> bool: ...

    @property
    def confirmed(self) -> bool: ...


@dataclass
class ChildEnd:
    """How the child ended: its exit code, whether the job was taken away from this attempt (``lost``),
    and whether it was terminated at once on a cancel request (``terminated_on_cancel``)."""

    exitcode: int | None = None
    lost: bool = False
    terminated_on_cancel: bool = False


def supervise_child(
    target: Callable[[Any, Any, Any], None],
    payload: Any,
    *,
    label: str,
    what: str,
    process_name: str,
    receive: Callable[[Any], None],
    flush: Callable[[], Lease],
    context: WorkerContext,
    stop_at_once: Callable[[], bool] = lambda: False,
) -> ChildEnd:
    """Run ``target(payload, messages, stop)`` in a spawned child named ``process_name`` until it exits:
    every message it sends goes to ``receive`` (in order, the last ones too), ``flush`` is called about
    every ``context.poll_interval_seconds`` to write what was received with the heartbeat. ``label``
    names the job in the log (``"run run_..."``), ``what`` the child (``"training process"``).
    ``stop_at_once()`` is asked on a cancel request: True terminates the child at once (it is in a stretch
    that never looks at the stop event)."""
    mp = billiard.get_context("spawn")
    messages = mp.Queue()
    stop = mp.Event()
    process = mp.Process(target=target, args=(payload, messages, stop), name=process_name)
    process.start()
    logger.info("%s: %s %s started", label, what, process.pid)
    end = ChildEnd()
    stop_sent_at: float | None = None
    next_flush = 0.0
    lease_renewed_at = time.monotonic()
    try:
        while True:
            try:
                receive(messages.get(timeout=_RECEIVE_TIMEOUT_SECONDS))
            except queue.Empty:
                if not process.is_alive():
                    break
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + context.poll_interval_seconds
                beat = flush()
                if beat.confirmed:
                    lease_renewed_at = now
                lapsed = now - lease_renewed_at > LEASE_MARGIN * context.settings.heartbeat_timeout_seconds
                if (not beat.owned or lapsed) and not end.lost:
                    logger.warning(
                        "%s: %s; stopping its %s",
                        label,
                        "this attempt no longer holds it"
                        if not beat.owned
                        else "the database has been unreachable too long to keep its lease",
                        what,
                    )
                    end.lost = True
                    stop.set()
                    stop_sent_at = now
                elif beat.cancel_requested and not stop.is_set():
                    stop.set()
                    stop_sent_at = now
                    if stop_at_once():
                        end.terminated_on_cancel = True
                        process.terminate()
            if (
                stop_sent_at is not None
                and now - stop_sent_at > context.stop_grace_seconds
                and process.is_alive()
            ):
                logger.warning(
                    "%s: %s did not stop in %.0f s; terminating it",
                    label,
                    what,
                    context.stop_grace_seconds,
                )
                process.terminate()
                stop_sent_at = now
        # The child flushed its queue before exiting: what it said last may still be in the pipe.
        while True:
            try:
                receive(messages.get(timeout=_DRAIN_TIMEOUT_SECONDS))
            except queue.Empty:
                break
    finally:
        if process.is_alive():  # this loop failed: do not leave an orphan at work
            stop.set()
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        process.join()
        messages.close()
    end.exitcode = process.exitcode
    logger.info("%s: %s exited with %s", label, what, process.exitcode)
    return end


def write_with_retries(
    session_factory: Callable[[], Session],
    write: Callable[[Session], T],
    *,
    label: str,
    retries: int = 5,
) -> T:
    """``write(session)`` in one transaction (its on-commit callbacks run after it), tried again while the
    database is unreachable (a DBAPIError), after 1, 2, 4... seconds (at most 30); the error of the last
    try is raised. ``label`` names the job in the log."""
    delay = 1.0
    for attempt in range(retries + 1):
        try:
            with session_scope(session_factory) as session:
                return write(session)
        except DBAPIError as exc:
            if attempt == retries:
                raise
            logger.warning("%s: final write failed, retrying in %.0f s (%s)", label, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")
