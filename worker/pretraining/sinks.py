"""Metric records, the sinks that receive them, and the running sums behind the metrics.

A run reports through one callable, ``sink(record)``. Two kinds of records:

- metrics: ``{"type": "metrics", "split": "train" | "eval" | "reference", "step": int, "metrics": {...}}``
  (train: :data:`TRAIN_METRICS`; eval and reference: :data:`EVAL_METRICS`, the NSP ones only when the run
  trains NSP);
- events: ``{"type": "event", "event": "started" | "checkpoint" | "finished", "step": int, ...}``.

The library knows no sink in particular: the service writes records to its database, the CLI drives a
progress bar, :class:`TensorBoardSink` and :class:`JsonlSink` write files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from worker.pretraining.model import PretrainingLoss

__all__ = [
    "EVAL_METRICS",
    "TRAIN_METRICS",
    "JsonlSink",
    "LossTotals",
    "MetricsSink",
    "TensorBoardSink",
    "combine_sinks",
    "metric_records",
    "read_jsonl",
]

logger = logging.getLogger(__name__)

TRAIN_METRICS = (
    "loss",
    "mlm_loss",
    "nsp_loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "samples_seen",
    "epoch",
    "step",
)
EVAL_METRICS = (
    "masked_lm_loss",
    "masked_lm_accuracy",
    "perplexity",
    "next_sentence_loss",
    "next_sentence_accuracy",
)


class MetricsSink(Protocol):
    """Anything called with each record; a plain function will do."""

    def __call__(self, record: dict[str, Any], /) -> None: ...


def combine_sinks(*sinks: MetricsSink | None) -> MetricsSink:
    """One sink feeding several. A sink that raises is logged and skipped: a metrics backend that
    hiccups must not kill a training run."""
    active = [sink for sink in sinks if sink is not None]

    def sink(record: dict[str, Any]) -> None:
        for target in active:
            try:
                target(record)
            except Exception:
                logger.exception("metrics sink %r failed on a %s record", target, record.get("type"))

    return sink


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


class LossTotals:
    """Token-weighted sums of the MLM and NSP losses and hits over many batches, kept on the device
    (no host sync per batch) and read once by :meth:`train_metrics` or :meth:`eval_metrics`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self.samples = 0

    def _add(self, name: str, value: torch.Tensor | None) -> None:
        if value is None:
            return
        value = value.detach().to(torch.float64)
        current = self._sums.get(name)
        self._sums[name] = value if current is None else current + value

    def add(self, out: PretrainingLoss, *, tokens: torch.Tensor | None = None, samples: int = 0) -> None:
        self._add("mlm_loss_sum", out.mlm_loss_sum)
        self._add("mlm_correct", out.mlm_correct)
        self._add("mlm_count", out.mlm_count)
        self._add("nsp_loss_sum", out.nsp_loss_sum)
        self._add("nsp_correct", out.nsp_correct)
        self._add("nsp_count", out.nsp_count)
        self._add("tokens", tokens)
        self.samples += samples

    def values(self) -> dict[str, float]:
        return {name: float(value.item()) for name, value in self._sums.items()}

    @property
    def empty(self) -> bool:
        return not self._sums

    @staticmethod
    def _ratio(values: dict[str, float], numerator: str, denominator: str) -> float | None:
        if numerator not in values or not values.get(denominator):
            return None
        return values[numerator] / values[denominator]

    def train_metrics(self) -> dict[str, float]:
        """mlm_loss, mlm_accuracy and, when NSP ran, nsp_loss and nsp_accuracy."""
        values = self.values()
        out = {
            "mlm_loss": self._ratio(values, "mlm_loss_sum", "mlm_count"),
            "mlm_accuracy": self._ratio(values, "mlm_correct", "mlm_count"),
            "nsp_loss": self._ratio(values, "nsp_loss_sum", "nsp_count"),
            "nsp_accuracy": self._ratio(values, "nsp_correct", "nsp_count"),
        }
        return {name: value for name, value in out.items() if value is not None}

    def eval_metrics(self) -> dict[str, float]:
        """The eval metrics of a whole split, MLM ones averaged over predicted tokens."""
        values = self.values()
        out: dict[str, float] = {}
        mlm_loss = self._ratio(values, "mlm_loss_sum", "mlm_count")
        if mlm_loss is not None:
            out["masked_lm_loss"] = mlm_loss
            out["masked_lm_accuracy"] = self._ratio(values, "mlm_correct", "mlm_count") or 0.0
            out["perplexity"] = _perplexity(mlm_loss)
        nsp_loss = self._ratio(values, "nsp_loss_sum", "nsp_count")
        if nsp_loss is not None:
            out["next_sentence_loss"] = nsp_loss
            out["next_sentence_accuracy"] = self._ratio(values, "nsp_correct", "nsp_count") or 0.0
        return out


class TensorBoardSink:
    """Writes every metrics record as scalars ``<split>/<metric>`` at its step. ``purge_step`` (on a
    resume) hides events an earlier attempt wrote past the checkpoint it resumes from."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def __call__(self, record: dict[str, Any]) -> None:
        if record.get("type") != "metrics":
            return
        step = int(record["step"])
        for name, value in record["metrics"].items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{record['split']}/{name}", value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class JsonlSink:
    """Appends every record as one JSON line (the run's own log; survives resumes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=str) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def metric_records(records: Iterable[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "metrics" and r.get("split") == split]
