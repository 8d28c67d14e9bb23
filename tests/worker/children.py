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


def killed_on_batch_7(job: Any, messages: Any, stop: Any) -> None:
    """The real training process, killed (SIGKILL, as by the out-of-memory killer) as it computes its
    seventh training batch: every attempt dies six steps after where it started."""
    import os
    import signal

    from worker.pretraining import trainer
    from worker.pretraining.loss import pretraining_loss
    from worker.training_process import run_training_job

    seen = 0

    def loss(model: Any, batch: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if model.training:
            seen += 1
            if seen == 7:
                os.kill(os.getpid(), signal.SIGKILL)
        return pretraining_loss(model, batch, **kwargs)

    trainer.pretraining_loss = loss  # type: ignore[assignment]
    run_training_job(job, messages, stop)
