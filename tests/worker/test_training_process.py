"""The training process of a multi-device run: torchrun's launcher, rank 0's records relayed, a killed rank
failing the attempt cleanly and the next attempt resuming from the last checkpoint (2 gloo processes on the
CPU)."""

from __future__ import annotations

import multiprocessing
import queue
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import TINY_RUN
from worker.failures import RunFailure
from worker.job import TrainingJob
from worker.pretraining.records import CheckpointSaved, MetricsRecord, TrainingRecord, TrainingResult

_DEADLINE_SECONDS = 300


def _job(tmp_path: Path, base: Path, corpus: Path, **hyperparameters: Any) -> TrainingJob:
    return TrainingJob(
        run_id="run-ddp",
        base_model=str(base),
        base_model_spec="tiny",
        corpus=str(corpus),
        corpus_id="corpus-1",
        out_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        hyperparameters={**TINY_RUN, **hyperparameters},
        dataloader_workers=0,
        devices=2,
    )


def _attempt(
    job: TrainingJob, on_record: Callable[[TrainingRecord, Any, Any], None]
) -> tuple[list[TrainingRecord], TrainingResult | RunFailure]:
    """Run ``job`` in a spawned training process, as the executor does; its records and its end.
    ``on_record(record, child, stop)`` sees every record as it comes."""
    from worker.training_process import run_training_job

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    stop = context.Event()
    child = context.Process(target=run_training_job, args=(job, messages, stop))
    child.start()
    records: list[TrainingRecord] = []
    deadline = time.monotonic() + _DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                message = messages.get(timeout=1)
            except queue.Empty:
                continue
            if isinstance(message, TrainingResult | RunFailure):
                return records, message
            records.append(message)
            on_record(message, child, stop)
        raise AssertionError(f"no end within {_DEADLINE_SECONDS} s; records: {records[-3:]}")
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


@pytest.mark.slow  # two trainings in 2 processes each: about a minute on 2 busy cores
def test_a_killed_rank_fails_the_run_cleanly_and_the_next_attempt_resumes(
    tmp_path: Path, tiny_bert_dir: Path, small_corpus: Path
) -> None:
    job = _job(tmp_path, tiny_bert_dir, small_corpus, max_steps=400, checkpoint_every_steps=2)
    killed: list[int] = []

    def kill_a_rank(record: TrainingRecord, child: Any, stop: Any) -> None:
        if killed or not (isinstance(record, CheckpointSaved) and record.step >= 2):
            return
        # The ranks: the launcher's children that loaded torch (not its multiprocessing manager). Their
        # RANK is set inside them, not in their initial environment: kill the last one started.
        ranks = []
        for process in psutil.Process(child.pid).children():
            try:
                if any("libtorch" in m.path for m in process.memory_maps()):
                    ranks.append(process)
            except psutil.Error:
                continue
        assert len(ranks) == 2, ranks
        victim = max(ranks, key=lambda p: p.create_time())
        victim.kill()
        killed.append(victim.pid)

    records, end = _attempt(job, kill_a_rank)
    assert killed, "no rank was found"
    assert isinstance(end, RunFailure), end
    # A training_process_died, which the executor retries (resuming), as the death of a one-process run.
    assert end.type == "training_process_died" and end.details["exit_code"] == -9, end.traceback
    assert re.search(r"training process [01] of 2 was killed by signal SIGKILL", end.message), end.message
    train_steps = [r.step for r in records if isinstance(r, MetricsRecord) and r.split == "train"]
    assert train_steps == sorted(set(train_steps))  # rank 0's records only: each step once
    checkpoints = [r.step for r in records if isinstance(r, CheckpointSaved)]
    assert checkpoints and checkpoints[-1] >= 2

    # The next attempt of the same run resumes from the last checkpoint; the supervisor's stop reaches both
    # ranks, which stop together at one step with a checkpoint.
    def stop_after_a_step(record: TrainingRecord, child: Any, stop: Any) -> None:
        if isinstance(record, MetricsRecord) and record.split == "train":
            stop.set()

    records, end = _attempt(job, stop_after_a_step)
    assert isinstance(end, TrainingResult), end
    assert end.resumed_from is not None and end.resumed_from.name == f"checkpoint-{checkpoints[-1]}"
    assert end.status == "cancelled"
    resumed = [r.step for r in records if isinstance(r, MetricsRecord) and r.split == "train"]
    assert resumed and resumed[0] == checkpoints[-1] + 1
    saved = [r.step for r in records if isinstance(r, CheckpointSaved)]
    assert saved[-1] == end.steps < 400  # the cancellation's checkpoint, at the step both ranks stopped at
    assert len(saved) == len(set(saved))  # each checkpoint reported once (rank 0)
    written = Path(job.out_dir) / "checkpoints" / f"checkpoint-{end.steps}"
    assert {p.name for p in written.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}


@pytest.mark.slow  # one training in 2 processes: about half a minute on 2 busy cores
def test_max_runtime_stops_every_rank_at_the_same_step(
    tmp_path: Path, tiny_bert_dir: Path, small_corpus: Path
) -> None:
    """max_runtime_seconds is measured by each rank on its own clock; the ranks agree on the step they stop
    at (a rank that stopped alone would leave the other waiting in its next collective: no end)."""
    job = _job(tmp_path, tiny_bert_dir, small_corpus, max_steps=100_000, max_runtime_seconds=1)

    records, end = _attempt(job, lambda record, child, stop: None)

    assert isinstance(end, TrainingResult), end
    assert end.status == "timed_out" and 0 < end.steps < 100_000
    saved = [r.step for r in records if isinstance(r, CheckpointSaved)]
    assert saved and saved[-1] == end.steps  # the stop's checkpoint, written once (rank 0)
    written = Path(job.out_dir) / "checkpoints" / f"checkpoint-{end.steps}"
    assert {p.name for p in written.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}


def _start_a_manager(results: Any, prepare: bool) -> None:
    """In a training child: what _run_distributed does first, then the standard library's spawn."""
    import multiprocessing

    from worker.training_process import prepare_to_spawn

    try:
        if prepare:
            prepare_to_spawn()
        with multiprocessing.get_context("spawn").Manager() as manager:
            manager.Queue().put(1)
        results.put("started")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def _pool_process(results: Any, prepare: bool) -> None:
    """A daemonic process, as a Celery pool process is, starting the training child as the supervisor does
    (billiard's spawn)."""
    import billiard

    child = billiard.get_context("spawn").Process(target=_start_a_manager, args=(results, prepare))
    child.start()
    child.join(120)


@pytest.mark.parametrize("prepare", [True, False])
def test_a_training_child_of_a_celery_pool_process_can_start_the_ranks(prepare: bool) -> None:
    """A multi-device run's training child starts processes with the standard library (torch's launcher,
    the records' manager); started from a daemonic pool process through billiard, it inherits what refuses
    that, unless prepare_to_spawn() clears it (without it: the failure a real worker showed)."""
    import billiard

    context = billiard.get_context("spawn")
    results = context.Queue()
    pool_process = context.Process(target=_pool_process, args=(results, prepare), daemon=True)
    pool_process.start()
    outcome = results.get(timeout=120)
    pool_process.join(30)
    if prepare:
        assert outcome == "started"
    else:
        # What prepare_to_spawn() is for (this test fails if it is no longer needed).
        assert outcome == "AssertionError: daemonic processes are not allowed to have children", outcome
