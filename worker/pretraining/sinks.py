"""Where a run's records go: one callable, ``sink(record)``, receives every
:data:`~worker.pretraining.records.TrainingRecord`.

The library knows no sink in particular: the service passes them to its supervisor (which writes rows and
the live stream), the CLI drives a progress bar, :class:`TensorBoardSink` and :class:`JsonlSink` write the
run's own files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from worker.pretraining.records import LogLine, MetricsRecord, Progress, TrainingRecord, parse_record

__all__ = [
    "JsonlSink",
    "RecordSink",
    "TensorBoardSink",
    "combine_sinks",
    "metric_records",
    "read_jsonl",
]

logger = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Anything called with each record; a plain function will do."""

    def __call__(self, record: TrainingRecord, /) -> None: ...


def combine_sinks(*sinks: RecordSink | None) -> RecordSink:
    """One sink feeding several. A sink that raises is logged and skipped: a metrics backend that
    hiccups must not kill a training run."""
    active = [sink for sink in sinks if sink is not None]

    def sink(record: TrainingRecord) -> None:
        for target in active:
            try:
                target(record)
            except Exception:
                logger.exception("sink %r failed on a %s record", target, record.kind)

    return sink


class TensorBoardSink:
    """Writes every metrics record as scalars ``<split>/<metric>`` at its step. ``purge_step`` (on a
    resume) hides events an earlier attempt wrote past the checkpoint it resumes from."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def __call__(self, record: TrainingRecord) -> None:
        if not isinstance(record, MetricsRecord):
            return
        for name, value in record.metrics.values().items():
            self._writer.add_scalar(f"{record.split}/{name}", value, global_step=record.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class JsonlSink:
    """Appends every metrics and event record as one JSON line (the run's own log; survives resumes).
    Progress and log lines are left out. Non-finite numbers are written as null (JSON has no NaN)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: TrainingRecord) -> None:
        if isinstance(record, (Progress, LogLine)):
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(record.model_dump_json() + "\n")


def read_jsonl(path: str | Path) -> list[TrainingRecord]:
    """The records of a ``metrics.jsonl``, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [parse_record(line) for line in lines if line.strip()]


def metric_records(records: Iterable[TrainingRecord], split: str) -> list[MetricsRecord]:
    return [r for r in records if isinstance(r, MetricsRecord) and r.split == split]
