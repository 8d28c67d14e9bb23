"""The service's processes, as ``bertpt`` commands:

    bertpt serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--reload] [--no-migrate]
    bertpt worker [--concurrency 1] [--queue training]

``serve`` upgrades the database (Alembic, ``upgrade head``) and runs the API with uvicorn, in
``--workers`` processes (:mod:`app.api.server`).
``worker`` runs a Celery worker on the training queue (and the evaluation queue, when it is another one):
prefork, one task per pool process at a time, each training or evaluation in its own child process. Stop
it with SIGTERM or Ctrl-C once (a warm shutdown: it waits for the running training to end); a second
Ctrl-C stops at once, and the training process, finding its supervisor gone, stops at the end of its step
with a checkpoint.
Both read the ``BERTPT_*`` settings from the environment.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from app.config import get_settings

__all__ = ["serve_command", "worker_command"]


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


@click.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Trainings at once [default: WORKER_CONCURRENCY, 1]. One per GPU.",
)
@click.option(
    "--queue",
    default=None,
    help="Queues to consume, separated by commas [default: TRAINING_QUEUE, EVALUATION_QUEUE and "
    "ANALYSIS_QUEUE].",
)
@click.option(
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--hostname", "-n", default=None, help="Celery node name [default: bertpt@<host>].")
def worker_command(concurrency: int | None, queue: str | None, loglevel: str, hostname: str | None) -> None:
    """Run a training worker (Celery, prefork) on the training and evaluation queues."""
    settings = get_settings()
    from worker.celery_app import app

    queues = dict.fromkeys(
        [settings.training_queue, settings.evaluation_queue_name(), settings.analysis_queue_name()]
    )
    argv = [
        "worker",
        "--queues",
        queue or ",".join(queues),
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
