"""Stand-in training processes for the executor tests (a spawned process finds its target by module and
name, so they live in a module of their own)."""

from __future__ import annotations

import time
from typing import Any


def preparing_forever(job: Any, messages: Any, stop: Any) -> None:
    """Never gets past loading and preparing (as with a huge corpus): reports nothing and ignores the stop
    event, as the library does while it prepares data."""
    while True:
        time.sleep(1)


def diverging_from_step_3(job: Any, messages: Any, stop: Any) -> None:
    """The real training process, with every loss NaN from the third training batch on (a learning rate
    far too high)."""
    from tests.support import nan_loss_on
    from worker.pretraining import trainer
    from worker.training_process import run_training_job

    trainer.pretraining_loss = nan_loss_on(lambda n: n >= 3)  # type: ignore[assignment]
    run_training_job(job, messages, stop)
