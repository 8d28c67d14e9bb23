"""The service's processes, as ``bertpt`` commands:

    bertpt serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--reload] [--no-migrate]
    bertpt worker [--concurrency 1] [--queues training.cpu,training] [--gpus 0,1]

``serve`` upgrades the database (Alembic, ``upgrade head``) and runs the API with uvicorn, in
``--workers`` processes (:mod:`app.api.server`).
``worker`` runs a Celery worker on the training queue of a resource class (``TRAINING_QUEUE.<class>``:
``DEFAULT_RESOURCE_CLASS``'s, the gpu class's with ``--gpus``) and on the evaluation and analysis queues:
prefork, one task per pool process at a time, each training or evaluation in its own child process.
``--gpus 0,1`` pins it to those devices (``CUDA_VISIBLE_DEVICES`` of everything it starts) and runs one
training at a time: start one worker per device group. Stop it with SIGTERM or Ctrl-C once (a warm
shutdown: it waits for the running training to end); a second Ctrl-C stops at once, and the training
process, finding its supervisor gone, stops at the end of its step with a checkpoint.
Both read the ``BERTPT_*`` settings from the environment.
"""

from __future__ import annotations

import os
import re

import click
from pydantic import ValidationError

from app.config import RESOURCE_CLASSES, Settings, get_settings

__all__ = ["serve_command", "worker_command", "worker_queues"]


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (one per core; the kernel spreads connections over them).",
)
@click.option("--reload", is_flag=True, help="Restart when the code changes (development; one worker).")
@click.option(
    "--migrate/--no-migrate",
    default=True,
    show_default=True,
    help="Upgrade the database to the latest schema first.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve_command(host: str, port: int, workers: int, reload: bool, migrate: bool, log_level: str) -> None:
    """Run the REST API (uvicorn), after upgrading the database."""
    from app.api.server import serve
    from app.db import upgrade_database

    if reload and workers > 1:
        raise click.UsageError("--reload runs one worker; leave out --workers")
    try:
        settings = get_settings()  # here, once, rather than in every worker that then dies
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None
    if migrate:
        upgrade_database(settings.database_url)
        click.echo("database schema is up to date", err=True)
    try:
        serve(host=host, port=port, workers=workers, log_level=log_level, reload=reload)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# A CUDA device: its index, or its UUID (GPU-..., MIG-...), as CUDA_VISIBLE_DEVICES takes them.
_DEVICE = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z./:-]+")


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks at once [default: WORKER_CONCURRENCY, 1]. 1 with --gpus: one training per worker.",
)
@click.option(
    "--queues",
    "--queue",
    "queue",
    default=None,
    help="Queues to consume, separated by commas [default: TRAINING_QUEUE.<DEFAULT_RESOURCE_CLASS> (.gpu "
    "with --gpus), EVALUATION_QUEUE and ANALYSIS_QUEUE].",
)
@click.option(
    "--gpus",
    default=None,
    help="The GPUs of this worker, separated by commas (0,1): CUDA_VISIBLE_DEVICES of its trainings. "
    "It serves the gpu class's queue by default, one training at a time.",
)
@click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--hostname", "-n", default=None, help="Celery node name [default: bertpt@<host>].")
def worker_command(
    concurrency: int | None, queue: str | None, gpus: str | None, loglevel: str, hostname: str | None
) -> None:
    """Run a worker (Celery, prefork) on the training queue of a resource class and on the evaluation and
    analysis queues."""
    settings = get_settings()
    devices = _devices(gpus) if gpus is not None else None
    if devices is not None and (concurrency or settings.worker_concurrency) > 1:
        raise click.UsageError("a worker pinned to --gpus runs one training at a time: leave --concurrency 1")
    queues = worker_queues(settings, queue, gpus=devices is not None)
    if devices is not None:
        # Inherited by the pool processes and the training processes they start.
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    from worker.celery_app import app

    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--prefetch-multiplier",
        "1",
        "--pool",
        "prefork",
        "--loglevel",
        loglevel.upper(),
        "--hostname",
        hostname or "bertpt@%h",
        # No broadcast chatter between workers: they share nothing but the queue.
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


def worker_queues(settings: Settings, given: str | None, *, gpus: bool) -> list[str]:
    """The queues of ``--queues`` (UsageError naming a training queue of no resource class), or the
    default: the training queue of the gpu class (with ``--gpus``) or of DEFAULT_RESOURCE_CLASS, then the
    evaluation and analysis queues."""
    if given is None:
        training = settings.training_queue_for("gpu" if gpus else settings.default_resource_class)
        return list(
            dict.fromkeys([training, settings.evaluation_queue_name(), settings.analysis_queue_name()])
        )
    queues = list(dict.fromkeys(name.strip() for name in given.split(",") if name.strip()))
    if not queues:
        raise click.UsageError("--queues names no queue")
    known = settings.training_queues()
    for name in queues:
        if name.startswith(f"{settings.training_queue}.") and name not in known:
            raise click.UsageError(
                f"{name!r} is the training queue of no resource class; those are {', '.join(known)} "
                f"(classes: {', '.join(RESOURCE_CLASSES)})"
            )
    return queues


def _devices(gpus: str) -> list[str]:
    """The devices of ``--gpus`` (indexes or UUIDs, separated by commas); UsageError for anything else."""
    devices = [device.strip() for device in gpus.split(",")]
    if not devices or any(not _DEVICE.fullmatch(device) for device in devices):
        raise click.UsageError(f"--gpus {gpus!r}: expected device indexes or UUIDs separated by commas (0,1)")
    if len(set(devices)) != len(devices):
        raise click.UsageError(f"--gpus {gpus!r} names a device twice")
    return devices
