"""The records a run reports: they pickle (they cross the process boundary as objects), round-trip
through JSON (metrics.jsonl), read the names bertpt 0.1 wrote, and refuse what does not fit."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.pretraining.records import (
    EvalMetrics,
    LogLine,
    MetricsRecord,
    ModelManifest,
    Progress,
    StepSkipped,
    TrainingFinished,
    TrainingOutcome,
    TrainingResult,
    TrainMetrics,
    parse_record,
)

TRAIN = TrainMetrics(
    loss=7.0,
    masked_lm_loss=6.5,
    masked_lm_accuracy=0.1,
    next_sentence_loss=0.5,
    next_sentence_accuracy=0.7,
    learning_rate=1e-4,
    tokens_per_second=1000.0,
    samples_seen=64,
    epoch=0.25,
)
EVAL = EvalMetrics(masked_lm_loss=6.0, masked_lm_accuracy=0.2, perplexity=math.exp(6.0))


@pytest.mark.parametrize(
    "record",
    [
        MetricsRecord(split="train", step=3, metrics=TRAIN),
        MetricsRecord(split="reference", step=0, metrics=EVAL),
        Progress(step=3, max_steps=10),
        LogLine(message="hello"),
        TrainingFinished(step=10, status="completed", model_path=Path("/runs/r/model")),
        StepSkipped(
            step=4, reason="non_finite_loss", loss=None, grad_norm=None, consecutive=2, skipped_steps=3
        ),
    ],
)
def test_records_pickle_and_round_trip_through_json(record: object) -> None:
    assert pickle.loads(pickle.dumps(record)) == record
    assert parse_record(record.model_dump_json()) == record  # type: ignore[attr-defined]


@pytest.mark.parametrize(("value", "flag"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_a_metric_that_is_not_finite_is_null_and_flagged_in_json(value: float, flag: str) -> None:
    metrics = TRAIN.model_copy(update={"loss": value, "grad_norm": math.nan})
    line = MetricsRecord(split="train", step=3, metrics=metrics).model_dump_json()
    parsed = json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in {line}"))
    assert parsed["metrics"]["loss"] is None and parsed["metrics"]["grad_norm"] is None
    assert parsed["metrics"]["non_finite"] == {"loss": flag, "grad_norm": "nan"}
    assert TRAIN.json_object()["non_finite"] == {}
    back = parse_record(line)
    assert isinstance(back, MetricsRecord) and isinstance(back.metrics, TrainMetrics)
    assert str(back.metrics.loss) == str(value) and math.isnan(back.metrics.grad_norm or 0.0)


def test_bertpt_0_1_metric_names_are_read_as_berts() -> None:
    old = {"loss": 7.0, "mlm_loss": 6.5, "mlm_accuracy": 0.1, "nsp_loss": 0.5, "nsp_accuracy": 0.7, "step": 3}
    old |= {"learning_rate": 1e-4, "tokens_per_second": 1000.0, "samples_seen": 64, "epoch": 0.25}
    assert TrainMetrics.model_validate(old) == TRAIN


def test_a_split_carries_its_kind_of_metrics() -> None:
    with pytest.raises(ValidationError, match="carries EvalMetrics"):
        MetricsRecord(split="train", step=1, metrics=EVAL)
    with pytest.raises(ValidationError):
        TrainMetrics.model_validate({"loss": 1.0, "learning_rate": 1.0, "typo": 2.0})


def test_values_are_the_metrics_that_have_one() -> None:
    assert EVAL.values() == {"masked_lm_loss": 6.0, "masked_lm_accuracy": 0.2, "perplexity": math.exp(6.0)}


def test_result_and_manifest_share_the_outcome() -> None:
    outcome = TrainingOutcome(
        status="completed",
        steps=10,
        max_steps=10,
        baseline_metrics={"eval": EVAL},
        final_metrics={"eval": EVAL},
        final_metrics_step=10,
        train_metrics={},  # type: ignore[arg-type]  # what bertpt 0.1 wrote before any logging step
        warnings=[],
        runtime_seconds=1.5,
        samples_seen=80,
        tokens_seen=4000,
        data_key="k",
    )
    assert outcome.train_metrics is None
    shared = set(TrainingOutcome.model_fields)
    assert shared < set(TrainingResult.model_fields) and shared < set(ModelManifest.model_fields)
    result = TrainingResult(
        **outcome.outcome_fields(), run_dir=Path("r"), model_path=None, checkpoint_path=None
    )
    assert result.outcome_fields() == outcome.outcome_fields()
