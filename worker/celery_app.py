"""The worker's Celery application: the one configuration of :mod:`app.queue` (Redis broker, JSON only,
``bertpt.runs.execute`` sent to the training queue of the run's resource class, ``bertpt.evaluations.execute``
to the evaluation queue and ``bertpt.analyze_corpus`` to the analysis queue, late acknowledgement, prefetch
1, the visibility timeout of the settings) plus the task modules. Its main process runs the housekeeping,
and announces the training queues it serves, its slots and its devices (:mod:`app.estimates.workers`).

    celery -A worker.celery_app worker -Q training.cpu,training --concurrency 1 --prefetch-multiplier 1
    bertpt worker                       # the same, from the settings
    bertpt worker --gpus 0              # training.gpu and the others, pinned to GPU 0

Settings are read when this module is imported: it is the worker's entry point, imported by Celery's
command line (``-A``) or by ``bertpt worker``, never by the API.
"""

from __future__ import annotations

import logging
import os
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
from worker.webhooks import WebhookDispatcher, start_webhook_dispatcher

__all__ = ["app", "create_worker_app", "pinned_devices", "worker_pool"]

logger = logging.getLogger(__name__)


def create_worker_app(settings: Settings | None = None) -> Celery:
    celery = create_celery(settings or get_settings())
    celery.conf.update(include=["worker.tasks"])
    return celery


app = create_worker_app()

_housekeeper: Housekeeper | None = None
_webhook_dispatcher: WebhookDispatcher | None = None


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
            if queues & set(settings.training_queues())
            else []
        )
        _housekeeper = start_housekeeping(settings, extra=extra)
    if settings.webhook_dispatch:
        _start_webhook_dispatcher(settings)


def worker_pool(consumer: Any, settings: Settings) -> tuple[int, frozenset[str]]:
    """The concurrency of the worker whose Celery ``consumer`` is given (``--concurrency``) and the names
    of the queues it consumes (``--queues``); the settings' (``WORKER_CONCURRENCY``, the default resource
    class's training queue) for what it does not say."""
    concurrency = getattr(getattr(consumer, "controller", None), "concurrency", None)
    try:
        consumed = frozenset(consumer.app.amqp.queues.consume_from)
    except AttributeError:
        consumed = frozenset()
    slots = concurrency if isinstance(concurrency, int) and concurrency > 0 else settings.worker_concurrency
    return slots, consumed or frozenset({settings.training_queue_for(settings.default_resource_class)})


def pinned_devices() -> int | None:
    """How many GPUs this worker is pinned to (``CUDA_VISIBLE_DEVICES``, which ``bertpt worker --gpus``
    sets); None when it is not pinned."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return len([device for device in visible.split(",") if device.strip()])


def _announcer(settings: Settings, slots: int, queues: frozenset[str]) -> Chore:
    """A chore that says, every housekeeping period, that this worker is alive on its training ``queues``
    with ``slots`` training slots and its devices (what the queue part of run estimates divides by, and
    what tells a run whether a worker serves its queue: :mod:`app.estimates.workers`); said once now too."""
    client = create_redis(settings.redis_url, socket_timeout=10)
    worker, period, devices = default_worker_id(), housekeeping_period(settings), pinned_devices()

    def announce() -> list[str]:
        announce_worker(
            client, settings, worker, slots=slots, queues=queues, period_seconds=period, devices=devices
        )
        return []

    try:
        announce()
    except RedisError as exc:  # the chore says it again at the next period
        logger.warning("cannot announce this worker yet (%s)", exc)
    return announce


def _start_webhook_dispatcher(settings: Settings) -> None:
    """The delivery of webhook events from the outbox (:mod:`worker.webhooks`), in the main process."""
    global _webhook_dispatcher
    _webhook_dispatcher = start_webhook_dispatcher(settings)


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()
    if _webhook_dispatcher is not None:
        _webhook_dispatcher.stop()
