"""The worker's Celery application: the one configuration of :mod:`app.queue` (Redis broker, JSON only,
``bertpt.runs.execute`` routed to the training queue, ``bertpt.evaluations.execute`` to the evaluation
queue and ``bertpt.analyze_corpus`` to the analysis queue, late acknowledgement, prefetch 1, the visibility
timeout of the settings) plus the task modules. Its main process runs the housekeeping, and announces the
worker's training slots (:mod:`app.estimates.workers`).

    celery -A worker.celery_app worker -Q training --concurrency 1 --prefetch-multiplier 1
    bertpt worker                       # the same, from the settings

Settings are read when this module is imported: it is the worker's entry point, imported by Celery's
command line (``-A``) or by ``bertpt worker``, never by the API.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from redis import RedisError

from app.config import Settings, get_settings
from app.estimates.workers import announce_worker
from app.housekeeping import Chore, Housekeeper, housekeeping_period, start_housekeeping
from app.queue import create_celery
from app.runs.live import create_redis
from worker.context import default_worker_id

__all__ = ["app", "create_worker_app", "worker_pool"]

logger = logging.getLogger(__name__)


def create_worker_app(settings: Settings | None = None) -> Celery:
    celery = create_celery(settings or get_settings())
    celery.conf.update(include=["worker.tasks"])
    return celery


app = create_worker_app()

_housekeeper: Housekeeper | None = None


@worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, once its pool is up (``sender``: its Celery consumer): the reapers and
    the sweeps of runs and evaluations left queued, and the announcement of a training worker."""
    global _housekeeper
    settings = get_settings()
    if settings.housekeeping:
        slots, queues = worker_pool(sender, settings)
        extra = (
            [("announce this worker", _announcer(settings, slots, queues))]
            if settings.training_queue in queues
            else []
        )
        _housekeeper = start_housekeeping(settings, extra=extra)


def worker_pool(consumer: Any, settings: Settings) -> tuple[int, frozenset[str]]:
    """The concurrency of the worker whose Celery ``consumer`` is given (``--concurrency``) and the names
    of the queues it consumes (``--queues``); the settings' (``WORKER_CONCURRENCY``, the training queue)
    for what it does not say."""
    concurrency = getattr(getattr(consumer, "controller", None), "concurrency", None)
    try:
        consumed = frozenset(consumer.app.amqp.queues.consume_from)
    except AttributeError:
        consumed = frozenset()
    slots = concurrency if isinstance(concurrency, int) and concurrency > 0 else settings.worker_concurrency
    return slots, consumed or frozenset({settings.training_queue})


def _announcer(settings: Settings, slots: int, queues: frozenset[str]) -> Chore:
    """A chore that says, every housekeeping period, that this worker is alive with ``slots`` training
    slots (what the queue part of run estimates divides by: :mod:`app.estimates.workers`); said once now
    too."""
    client = create_redis(settings.redis_url, socket_timeout=10)
    worker, period = default_worker_id(), housekeeping_period(settings)

    def announce() -> list[str]:
        announce_worker(client, settings, worker, slots=slots, queues=queues, period_seconds=period)
        return []

    try:
        announce()
    except RedisError as exc:  # the chore says it again at the next period
        logger.warning("cannot announce this worker yet (%s)", exc)
    return announce


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()
