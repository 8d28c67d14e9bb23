"""The training process: one run's ``run_pretraining`` in a child of the Celery task, started with
``spawn`` (CUDA does not survive ``fork``, and the task's process stays free to supervise; it is
started through billiard, Celery's multiprocessing, which allows children of pool processes).

It talks to its supervisor through a multiprocessing queue of :data:`ChildMessage` objects, pickled as
they are: every :data:`~worker.pretraining.records.TrainingRecord` of the run (progress at most
:data:`PROGRESS_INTERVAL_SECONDS` apart, and at the last step), then its end, a
:class:`~worker.pretraining.records.TrainingResult` (completed, cancelled or timed out) or a
:class:`~worker.failures.RunFailure` (it raised: the exception mapped for the user, the traceback for the
worker log only).

It stops cooperatively, with a checkpoint, when the supervisor sets ``stop`` or when the supervisor
disappears (so an orphan never trains on alongside a later attempt of the same run). It ignores SIGINT,
so a Ctrl-C on the worker's terminal leaves the decision to the supervisor; SIGTERM ends it promptly,
cleaning up partial writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, NoReturn, Protocol

from worker.failures import RunFailure, describe_failure
from worker.job import TrainingJob
from worker.pretraining.records import Progress, TrainingRecord, TrainingResult

__all__ = [
    "PROGRESS_INTERVAL_SECONDS",
    "ChildMessage",
    "configure_child_process",
    "exit_now",
    "run_training_job",
]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25
ChildMessage = TrainingRecord | TrainingResult | RunFailure


class _Queue(Protocol):
    def put(self, obj: Any, /) -> None: ...

    def close(self) -> None: ...

    def join_thread(self) -> None: ...


class _Event(Protocol):
    def is_set(self) -> bool: ...


class _ThrottledSink:
    """Sends every record, but progress at most every PROGRESS_INTERVAL_SECONDS (and the last step)."""

    def __init__(self, messages: _Queue) -> None:
        self.messages = messages
        self._last_progress = 0.0

    def __call__(self, record: TrainingRecord) -> None:
        if isinstance(record, Progress):
            now = time.monotonic()
            if now - self._last_progress < PROGRESS_INTERVAL_SECONDS and record.step < record.max_steps:
                return
            self._last_progress = now
        self.messages.put(record)


def configure_child_process(label: str, *, hf_hub_offline: bool) -> None:
    """What a supervised child sets first (an evaluation's too): SIGINT ignored (a Ctrl-C on the worker's
    terminal leaves the decision to the supervisor), SIGTERM a prompt exit that cleans up, the hub offline
    when the settings say so, log lines tagged ``[<label> pid N]``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if hf_hub_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub when it is first imported
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{label} pid %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # SystemExit unwinds the stack, so partly written prepared data and checkpoints are cleaned up.
    raise SystemExit(128 + signum)


def run_training_job(job: TrainingJob, messages: _Queue, stop: _Event) -> None:
    """The child process's entry point: train ``job``, report through ``messages``."""
    configure_child_process(f"training {job.run_id}", hf_hub_offline=job.hf_hub_offline)
    supervisor = os.getppid()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != supervisor

    try:
        from worker.pretraining.engine import run_pretraining

        result = run_pretraining(
            job.base_model,
            job.corpus,
            job.out_dir,
            job.hyperparameters,
            eval_corpus=job.eval_corpus,
            reference_corpus=job.reference_corpus,
            replay_corpus=job.replay_corpus,
            cache_dir=job.cache_dir,
            sink=_ThrottledSink(messages),
            should_stop=should_stop,
            resume=True,
            dataloader_workers=job.dataloader_workers,
        )
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        failure: RunFailure = describe_failure(exc, job)
        messages.put(dataclasses.replace(failure, traceback=traceback.format_exc()))
        exit_now(messages)
    messages.put(result)
    exit_now(messages)


def exit_now(messages: _Queue) -> NoReturn:
    """End the process once its last message has left: its work has closed its files, and the
    interpreter's teardown with torch loaded takes seconds that the job's end (or its retry) would wait."""
    messages.close()
    messages.join_thread()  # the queue's feeder thread has written everything to the pipe
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
