"""The training process: one run's ``run_pretraining`` in a child of the Celery task, started with
``spawn`` (CUDA does not survive ``fork``, and the task's process stays free to supervise; it is
started through billiard, Celery's multiprocessing, which allows children of pool processes).

It talks to its supervisor through a multiprocessing queue of :data:`ChildMessage` objects, pickled as
they are: every :data:`~worker.pretraining.records.TrainingRecord` of the run (progress at most
:data:`PROGRESS_INTERVAL_SECONDS` apart, and at the last step), then its end, a
:class:`~worker.pretraining.records.TrainingResult` (completed, cancelled or timed out) or a
:class:`~worker.failures.RunFailure` (it raised: the exception mapped for the user, the traceback for the
worker log only).

A run with ``devices`` N > 1 trains in N processes launched from this one by torchrun's launcher
(``torch.distributed.launcher.api.elastic_launch``, what the ``torchrun`` command runs; no restarts):
each runs ``run_pretraining`` as one rank of a DDP process group (NCCL on GPUs, gloo on the CPU; see
:mod:`worker.pretraining.engine`). Rank 0's records come back through a queue of a multiprocessing manager
and are relayed to the supervisor; the stop is relayed to every rank through the manager's event (the ranks
agree on the step to stop at). A rank that dies makes the launcher end the others and raise: the run
fails like any other failure, and its next attempt resumes from the last complete checkpoint.

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

from worker.failures import RunFailure, describe_failure, describe_process_death
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
        if job.devices > 1:
            ended = _run_distributed(job, messages, should_stop)
            if isinstance(ended, RunFailure):  # rank 0's, already sent
                exit_now(messages)
            result = ended
        else:
            result = _run_here(job, _ThrottledSink(messages), should_stop)
    except (SystemExit, KeyboardInterrupt):
        raise
    except _RankDied as died:
        messages.put(died.failure)  # retried by the executor, like the death of a one-process training
        exit_now(messages)
    except BaseException as exc:
        failure: RunFailure = describe_failure(exc, job)
        messages.put(dataclasses.replace(failure, traceback=traceback.format_exc()))
        exit_now(messages)
    messages.put(result)
    exit_now(messages)


def _run_here(job: TrainingJob, sink: Any, should_stop: Any) -> TrainingResult:
    """``run_pretraining`` of ``job`` in this process (one rank of several under torchrun)."""
    from worker.pretraining.engine import run_pretraining

    return run_pretraining(
        job.base_model,
        job.corpus,
        job.out_dir,
        job.hyperparameters,
        eval_corpus=job.eval_corpus,
        reference_corpus=job.reference_corpus,
        replay_corpus=job.replay_corpus,
        cache_dir=job.cache_dir,
        sink=sink,
        should_stop=should_stop,
        resume=True,
        dataloader_workers=job.dataloader_workers,
    )


class _RankDied(Exception):
    """A rank of a multi-device run ended without a result or an error of rank 0 (killed, or another rank
    raised): ``failure`` is a ``training_process_died``, which the executor retries."""

    def __init__(self, failure: RunFailure):
        super().__init__(failure.message)
        self.failure = failure


def prepare_to_spawn() -> None:
    """Let this process, a training child started by billiard (Celery's multiprocessing) from a worker's
    pool process, start processes with the standard library (the manager of the ranks' queues, and the
    ranks, which torch's launcher spawns). Two things it inherited refuse that: billiard's authentication
    key, which the standard library cannot pickle (a fresh one of the same bytes), and the daemon flag of
    the pool process it was started from ("daemonic processes are not allowed to have children"). The
    training child is not a daemon in that sense: its supervisor stops it, and it stops its ranks."""
    import multiprocessing

    current = multiprocessing.current_process()
    config = current._config  # type: ignore[attr-defined]
    authkey = multiprocessing.process.AuthenticationString  # type: ignore[attr-defined]
    config["authkey"] = authkey(bytes(current.authkey))
    config.pop("daemon", None)


def _run_distributed(job: TrainingJob, messages: _Queue, should_stop: Any) -> TrainingResult | RunFailure:
    """Train ``job`` in ``job.devices`` processes (torchrun's launcher, no restarts), relaying rank 0's
    records to ``messages`` and ``should_stop()`` to every rank. Returns rank 0's result, or the
    RunFailure rank 0 reported (already relayed: its error mapped as in a one-process run). Raises
    _RankDied when a rank failed otherwise (killed, or an error of another rank: its traceback is in the
    worker log); the launcher has then stopped the others."""
    import multiprocessing
    import threading

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    prepare_to_spawn()
    with multiprocessing.get_context("spawn").Manager() as manager:
        records = manager.Queue()
        stop = manager.Event()
        finished = threading.Event()
        reported: list[RunFailure] = []

        def relay() -> None:
            stopping = False
            while True:
                if not stopping and should_stop():  # polled between records too: they may never pause
                    stop.set()
                    stopping = True
                try:
                    record = records.get(timeout=0.2)
                except Exception:  # queue.Empty, or the manager gone at the end
                    if finished.is_set():
                        return
                    continue
                if isinstance(record, RunFailure):
                    reported.append(record)
                messages.put(record)

        relaying = threading.Thread(target=relay, name="bertpt-rank-records", daemon=True)
        relaying.start()
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=job.devices,
            run_id=f"bertpt-{job.run_id}",
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",  # a free port
            max_restarts=0,  # a failed rank fails the attempt; the next one resumes from a checkpoint
            monitor_interval=0.5,
            start_method="spawn",
        )
        results: dict[int, Any] = {}
        died: RunFailure | None = None
        try:
            results = elastic_launch(config, _rank_main)(job, records, stop)
        except ChildFailedError as exc:
            # The cause: a process killed by a signal (the others then fail in their collectives), else the
            # first that failed.
            killed = [(r, f) for r, f in sorted(exc.failures.items()) if f.exitcode < 0]
            rank, failure = killed[0] if killed else exc.get_first_failure()
            died = describe_process_death(
                failure.exitcode, process=f"training process {rank} of {job.devices}"
            )
        finally:
            finished.set()
            relaying.join()
            while not records.empty():  # what rank 0 sent last
                record = records.get()
                if isinstance(record, RunFailure):
                    reported.append(record)
                messages.put(record)
    if reported:
        return reported[0]
    if died is not None:
        raise _RankDied(died)
    return results[0]


def _rank_main(job: TrainingJob, records: Any, stop: Any) -> TrainingResult:
    """One rank of a multi-device run (the environment of torchrun's launcher: RANK, WORLD_SIZE, ...)."""
    rank = int(os.environ.get("RANK", "0"))
    configure_child_process(f"training {job.run_id} rank {rank}", hf_hub_offline=job.hf_hub_offline)
    launcher = os.getppid()

    def should_stop() -> bool:
        return bool(stop.is_set()) or os.getppid() != launcher

    try:
        return _run_here(job, _ThrottledSink(records) if rank == 0 else None, should_stop)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if rank == 0 and not _peer_lost(exc):  # mapped here: the launcher only learns an exit code
            failure = describe_failure(exc, job)
            records.put(dataclasses.replace(failure, traceback=traceback.format_exc()))
        raise


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process is gone (NCCL's
    ``DistBackendError``, gloo's ``RuntimeError`` on a closed connection), not an error of this one."""
    import torch.distributed

    if isinstance(exc, torch.distributed.DistError):
        return True
    return isinstance(exc, RuntimeError) and "gloo" in str(exc)


def exit_now(messages: _Queue) -> NoReturn:
    """End the process once its last message has left: its work has closed its files, and the
    interpreter's teardown with torch loaded takes seconds that the job's end (or its retry) would wait."""
    messages.close()
    messages.join_thread()  # the queue's feeder thread has written everything to the pipe
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
