"""What the workers measured on earlier runs, read back from what the runs recorded: the figures estimates
use instead of the defaults once there are some.

For each of the newest :data:`MEASURED_RUNS` runs that started training (their ``training_started`` event
names the device, and the model size since bertpt 0.x): the median of the ``tokens_per_second`` of their
training windows (real wordpieces per second of training, evaluations excluded: the first window's
warm-up does not move a median), and, for a run that succeeded in one attempt, its startup: its whole time
(``finished_at - started_at``) less its training (``tokens_seen / tokens_per_second``) and its evaluations
(each pass over its eval splits at ``EVALUATION_SPEEDUP`` times that speed).

Every tenant's runs count: the workers, and so their speed, are shared; only these aggregates come out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.estimates import repository
from app.estimates.schemas import Throughput
from app.runs.events import RunEventType
from app.runs.states import RunStatus
from worker.pretraining.estimates import (
    DEFAULT_STARTUP_SECONDS,
    EVALUATION_SPEEDUP,
    MEAN_LENGTH_SHARE,
    Device,
    default_tokens_per_second,
    training_flops_per_token,
)
from worker.pretraining.records import ModelShape

__all__ = ["MEASURED_RUNS", "MeasuredRun", "Workers", "measured_runs"]

# The newest runs whose measures count (older ones ran on machines that may be gone).
MEASURED_RUNS = 20


@dataclass(frozen=True)
class MeasuredRun:
    """One earlier run's measures."""

    run_id: str
    device: Device
    shape: ModelShape
    max_seq_length: int
    masked_lm_prob: float
    tokens_per_second: float  # median of its training windows
    startup_seconds: float | None  # None: not one clean attempt to the end

    @property
    def flops_per_second(self) -> float:
        """Its effective training FLOP/s (how model sizes and lengths are compared)."""
        return self.tokens_per_second * training_flops_per_token(
            self.shape,
            sequence_length=self.max_seq_length * MEAN_LENGTH_SHARE,
            masked_lm_prob=self.masked_lm_prob,
        )


def measured_runs(session: Session, *, limit: int = MEASURED_RUNS) -> list[MeasuredRun]:
    """The measures of the newest ``limit`` runs that trained, newest first."""
    started: dict[str, dict[str, Any]] = {}
    for event in repository.latest_events(session, RunEventType.TRAINING_STARTED, limit=4 * limit):
        if (
            event.run_id not in started
            and event.data.get("model")
            and event.data.get("device") in ("cpu", "cuda")
        ):
            started[event.run_id] = event.data
        if len(started) == limit:
            break
    runs = repository.runs_by_id(session, started)
    speeds = repository.train_throughputs(session, started)
    passes = repository.eval_passes(session, started)
    prepared = {
        run_id: event.data
        for run_id, event in repository.events_of(session, started, RunEventType.DATA_PREPARED).items()
    }
    measured = []
    for run_id, data in started.items():
        run, windows = runs.get(run_id), speeds.get(run_id)
        if run is None or not windows:
            continue
        try:
            shape = ModelShape.model_validate(data["model"])
        except ValidationError:
            continue
        hyperparameters = run.hyperparameters or {}
        speed = statistics.median(windows)
        if speed <= 0:
            continue
        measured.append(
            MeasuredRun(
                run_id=run_id,
                device=cast(Device, data["device"]),
                shape=shape,
                max_seq_length=int(hyperparameters.get("max_seq_length", 128)),
                masked_lm_prob=float(hyperparameters.get("masked_lm_prob", 0.15)),
                tokens_per_second=speed,
                startup_seconds=_startup(run, speed, data, prepared.get(run_id), passes),
            )
        )
    return measured


def _startup(
    run: Any,
    speed: float,
    started: dict[str, Any],
    prepared: dict[str, Any] | None,
    passes: dict[tuple[str, str], int],
) -> float | None:
    """The run's whole time less its training and evaluation, when it succeeded in one attempt."""
    tokens = (run.progress or {}).get("tokens_seen")
    if run.status != RunStatus.SUCCEEDED or run.attempt != 1 or not run.started_at or not run.finished_at:
        return None
    if not isinstance(tokens, int) or prepared is None:
        return None
    mean_length = ((prepared.get("splits") or {}).get("train") or {}).get("mean_length")
    if not isinstance(mean_length, (int, float)):
        return None
    evaluated = sum(
        passes.get((run.id, split), 0) * instances * mean_length
        for split, instances in (started.get("eval_splits") or {}).items()
    )
    wall = (run.finished_at - run.started_at).total_seconds()
    return max(0.0, wall - tokens / speed - evaluated / (EVALUATION_SPEEDUP * speed))


@dataclass(frozen=True)
class Workers:
    """The fleet as estimates see it: what earlier runs measured, by device."""

    runs: list[MeasuredRun]

    @property
    def device(self) -> Device:
        """The worker class that would run a new run: that of the most recent run that started (a fleet
        that changes hardware is followed), cpu before any."""
        return self.runs[0].device if self.runs else "cpu"

    def throughput(self, shape: ModelShape, *, max_seq_length: int, masked_lm_prob: float) -> Throughput:
        """The training speed of a run of a model of ``shape`` (see :class:`Throughput`'s sources)."""
        device = self.device
        here = [run for run in self.runs if run.device == device]
        same = [
            run for run in here if run.shape.label == shape.label and run.max_seq_length == max_seq_length
        ]
        flops = training_flops_per_token(
            shape, sequence_length=max_seq_length * MEAN_LENGTH_SHARE, masked_lm_prob=masked_lm_prob
        )
        if same:
            speed, source, runs = (
                statistics.median(run.tokens_per_second for run in same),
                "measured",
                len(same),
            )
        elif here:
            speed = statistics.median(run.flops_per_second for run in here) / flops
            source, runs = "scaled", len(here)
        else:
            speed = default_tokens_per_second(
                shape, device, max_seq_length=max_seq_length, masked_lm_prob=masked_lm_prob
            )
            source, runs = "default", 0
        return Throughput(
            tokens_per_second=round(speed, 2),
            source=source,
            runs=runs,
            device=device,
            model=shape.label,
            max_seq_length=max_seq_length,
        )

    def startup_seconds(self) -> tuple[float, int] | None:
        """(the median startup of recent clean runs on the device, how many), or None when none measured."""
        measured = [
            run.startup_seconds
            for run in self.runs
            if run.device == self.device and run.startup_seconds is not None
        ]
        return (statistics.median(measured), len(measured)) if measured else None

    def default_startup_seconds(self) -> float:
        return DEFAULT_STARTUP_SECONDS[self.device]
