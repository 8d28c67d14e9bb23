"""The training process: one run's ``run_pretraining`` in a child of the Celery task, started with
``spawn`` (CUDA does not survive ``fork``, and the task's process stays free to supervise; it is
started through billiard, Celery's multiprocessing, which allows children of pool processes).

It talks to its supervisor through a multiprocessing queue of ``(kind, payload)`` messages:

- ``("record", record)``: a metrics or event record of the training library, as the sink received it;
- ``("progress", {"step", "max_steps"})``: at most a few times a second, and at the last step;
- ``("log", line)``: the library's human-readable lines;
- ``("result", TrainingResult.to_dict())``: the run ended (completed, cancelled or timed out);
- ``("failure", {"type", "message", ..., "traceback"})``: it raised; the exception mapped for the user
  (see :mod:`worker.failures`), the traceback for the worker log only.

It stops cooperatively, with a checkpoint, when the supervisor sets ``stop`` or when the supervisor
disappears (so an orphan never trains on alongside a later attempt of the same run). It ignores SIGINT,
so a Ctrl-C on the worker's terminal leaves the decision to the supervisor; SIGTERM ends it promptly,
cleaning up partial writes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from worker.failures import describe_failure
from worker.job import TrainingJob

__all__ = ["PROGRESS_INTERVAL_SECONDS", "run_training_job"]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25


class _Queue(Protocol):
    def put(self, obj: Any, /) -> None: ...


class _Event(Protocol):
    def is_set(self) -> bool: ...


def _throttled_progress(send: Callable[[tuple[str, Any]], None]) -> Callable[[int, int], None]:
    last = 0.0

    def progress(step: int, max_steps: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_SECONDS or step >= max_steps:
            last = now
            send(("progress", {"step": step, "max_steps": max_steps}))

    return progress


def _configure_process(job: TrainingJob) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if job.hf_hub_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub when it is first imported
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [training {job.run_id} pid %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the stack, so partly written prepared data and checkpoints are cleaned up.
    raise SystemExit(128 + signum)


def run_training_job(job: TrainingJob, messages: _Queue, stop: _Event) -> None:
    """The child process's entry point: train ``job``, report through ``messages``."""
    _configure_process(job)
    supervisor = os.getppid()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != supervisor

    def send(message: tuple[str, Any]) -> None:
        messages.put(message)

    try:
        from worker.pretraining.engine import run_pretraining

        result = run_pretraining(
            job.base_model,
            job.corpus,
            job.out_dir,
            job.hyperparameters,
            eval_corpus=job.eval_corpus,
            reference_corpus=job.reference_corpus,
            cache_dir=job.cache_dir,
            sink=lambda record: send(("record", record)),
            should_stop=should_stop,
            resume=True,
            progress=_throttled_progress(send),
            log=lambda line: send(("log", line)),
            dataloader_workers=job.dataloader_workers,
        )
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        failure = describe_failure(exc, job)
        send(("failure", {**failure.as_error(), "traceback": traceback.format_exc()}))
        return
    send(("result", result.to_dict()))
