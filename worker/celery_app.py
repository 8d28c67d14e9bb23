"""The worker's Celery application: the one configuration of :mod:`app.queue` (Redis broker, JSON only,
``bertpt.runs.execute`` routed to the training queue, late acknowledgement, prefetch 1, the visibility
timeout of the settings) plus the task modules.

    celery -A worker.celery_app worker -Q training --concurrency 1 --prefetch-multiplier 1
    bertpt worker                       # the same, from the settings

Settings are read when this module is imported: it is the worker's entry point, imported by Celery's
command line (``-A``) or by ``bertpt worker``, never by the API.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from app.config import Settings, get_settings
from app.housekeeping import Housekeeper, start_housekeeping
from app.queue import create_celery

__all__ = ["app", "create_worker_app"]


def create_worker_app(settings: Settings | None = None) -> Celery:
    celery = create_celery(settings or get_settings())
    celery.conf.update(include=["worker.tasks"])
    return celery


app = create_worker_app()

_housekeeper: Housekeeper | None = None


@worker_ready.connect
def _start_housekeeping(**_: Any) -> None:
    """In the worker's main process, once its pool is up: the reaper and the sweep of runs left queued."""
    global _housekeeper
    settings = get_settings()
    if settings.housekeeping:
        _housekeeper = start_housekeeping(settings)


@worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _housekeeper is not None:
        _housekeeper.stop()
