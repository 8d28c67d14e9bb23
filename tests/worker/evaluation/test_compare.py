"""``compare_models`` on two tiny BERTs and a generated topic task: per-seed scores, paired differences,
learning, determinism, progress and cancellation, inputs refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.worker.evaluation.conftest import TINY_FINETUNE, TINY_PROBE, TOPICS
from worker.evaluation.compare import EvaluationCancelled, ModelToEvaluate, compare_models
from worker.evaluation.labelled import LabelledExample
from worker.evaluation.results import ComparisonResult, EvaluationProgress
from worker.evaluation.settings import EvaluationConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # fine-tunes tiny BERTs

Split = tuple[list[LabelledExample], list[LabelledExample]]
# Student's t quantile t(0.975, df=1), from a t table: the 95% interval of the mean of 2 paired values.
T_975_DF1 = 12.7062


@pytest.fixture(scope="module")
def finetuned(
    one_thread: None, two_models: list[Any], topic_split: Split
) -> tuple[ComparisonResult, list[Any]]:
    """Both models fine-tuned with seeds 0 and 1, and the progress reports."""
    reports: list[EvaluationProgress] = []
    config = EvaluationConfig(method="finetune", seeds=2, hyperparameters=TINY_FINETUNE)
    result = compare_models(two_models, *topic_split, config, progress=reports.append)
    return result, reports


@pytest.fixture(scope="module")
def probed(one_thread: None, two_models: list[Any], topic_split: Split) -> ComparisonResult:
    return compare_models(
        two_models, *topic_split, EvaluationConfig(method="probe", seeds=3, hyperparameters=TINY_PROBE)
    )


def _hand_paired(values: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Mean of the two paired differences and its 95% t interval, the textbook way."""
    d1, d2 = (a - b for a, b in zip(values, baseline, strict=True))
    mean = (d1 + d2) / 2
    sd = abs(d1 - d2) / math.sqrt(2)  # sqrt(((d1-m)^2 + (d2-m)^2) / (2-1))
    half = T_975_DF1 * sd / math.sqrt(2)
    return mean, mean - half, mean + half


def test_finetune_reports_every_seed_and_the_paired_difference(finetuned: Any, topic_split: Split) -> None:
    result, _ = finetuned
    train, test = topic_split
    assert result.method == "finetune" and result.seeds == [0, 1]
    assert result.labels == sorted(TOPICS)
    assert (result.train_examples, result.test_examples) == (len(train), len(test)) == (90, 30)
    assert [m.model for m in result.models] == ["pretraining-heads", "encoder"]
    baseline, other = result.models
    for model in result.models:
        for summary in (model.accuracy, model.macro_f1):
            assert len(summary.per_seed) == 2 and all(0 <= v <= 1 for v in summary.per_seed)
            assert summary.mean == pytest.approx(sum(summary.per_seed) / 2)
            assert summary.sd == pytest.approx(abs(summary.per_seed[0] - summary.per_seed[1]) / math.sqrt(2))
            # accuracy is a multiple of 1/30 here: 30 test examples
            assert all(round(v * 30, 6).is_integer() for v in model.accuracy.per_seed)
        assert model.epochs_trained is not None and len(model.epochs_trained) == 2
        assert model.max_seq_length is not None and 8 < model.max_seq_length <= 64
    assert baseline.difference_vs_first is None
    assert other.difference_vs_first is not None
    for metric in ("accuracy", "macro_f1"):
        mean, low, high = _hand_paired(getattr(other, metric).per_seed, getattr(baseline, metric).per_seed)
        difference = other.difference_vs_first[metric]
        assert difference.n == 2
        assert difference.mean == pytest.approx(mean, abs=1e-12)
        assert difference.ci_low == pytest.approx(low, abs=1e-4)
        assert difference.ci_high == pytest.approx(high, abs=1e-4)
    assert result.hyperparameters == TINY_FINETUNE.model_dump(mode="json")


def test_fine_tuning_learns_the_topics(finetuned: Any) -> None:
    result, _ = finetuned
    for model in result.models:  # chance: 1/3
        assert model.accuracy.mean >= 0.6, model
        assert model.macro_f1.mean >= 0.5, model


def test_progress_is_reported_as_the_first_fit_starts_and_after_every_fit(finetuned: Any) -> None:
    _, reports = finetuned
    assert [(r.model, r.model_index, r.seed, r.done, r.total) for r in reports] == [
        ("pretraining-heads", 0, 0, 0, 4),
        ("pretraining-heads", 0, 0, 1, 4),
        ("pretraining-heads", 0, 1, 2, 4),
        ("encoder", 1, 0, 3, 4),
        ("encoder", 1, 1, 4, 4),
    ]


def test_the_same_seeds_give_the_same_numbers(
    finetuned: Any, two_models: list[Any], topic_split: Split
) -> None:
    """Seed 0 again, the baseline alone: the same scores (nor do they depend on the other models compared
    or on the number of seeds)."""
    result, _ = finetuned
    config = EvaluationConfig(method="finetune", seeds=1, hyperparameters=TINY_FINETUNE)
    again = compare_models(two_models[:1], *topic_split, config).models[0]
    first = result.models[0]
    assert again.accuracy.per_seed == first.accuracy.per_seed[:1]
    assert again.macro_f1.per_seed == first.macro_f1.per_seed[:1]
    assert again.epochs_trained == first.epochs_trained[:1]


def test_probe_scores_frozen_features(
    probed: ComparisonResult, two_models: list[Any], topic_split: Split
) -> None:
    assert probed.method == "probe" and probed.seeds == [0, 1, 2]
    for model in probed.models:
        assert len(model.accuracy.per_seed) == len(model.macro_f1.per_seed) == 3
        assert model.accuracy.mean > 0.5, model  # chance: 1/3; a random encoder's words already tell
        assert model.epochs_trained is None
    difference = probed.models[1].difference_vs_first
    assert difference is not None
    per_seed = [
        a - b
        for a, b in zip(probed.models[1].accuracy.per_seed, probed.models[0].accuracy.per_seed, strict=True)
    ]
    assert difference["accuracy"].mean == pytest.approx(sum(per_seed) / 3, abs=1e-12)
    assert difference["accuracy"].n == 3
    again = compare_models(
        two_models, *topic_split, EvaluationConfig(method="probe", seeds=3, hyperparameters=TINY_PROBE)
    )
    assert again.model_dump(exclude={"runtime_seconds"}) == probed.model_dump(exclude={"runtime_seconds"})


def test_should_stop_cancels_within_fine_tuning(two_models: list[Any], topic_split: Split) -> None:
    polls = 0
    reports: list[EvaluationProgress] = []

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3  # before the model, before its first seed, then after the first training batch

    config = EvaluationConfig(method="finetune", seeds=2, hyperparameters=TINY_FINETUNE)
    with pytest.raises(EvaluationCancelled):
        compare_models(two_models, *topic_split, config, progress=reports.append, should_stop=should_stop)
    assert polls == 3 and [(r.done, r.total) for r in reports] == [(0, 4)]  # started, nothing finished


def test_inputs_that_cannot_be_compared_are_refused_before_any_fit(
    two_models: list[Any], topic_split: Split, tmp_path: Path
) -> None:
    train, test = topic_split
    config = EvaluationConfig(method="probe", seeds=1)
    never = pytest.fail  # no fit may report progress

    unseen = [*test, LabelledExample(text="Words.", label="delta")]
    with pytest.raises(ValueError, match="delta"):
        compare_models(two_models, train, unseen, config, progress=lambda _: never())
    with pytest.raises(ValueError, match="distinct"):
        compare_models([two_models[0], two_models[0]], train, test, config)
    (tmp_path / "config.json").write_text("{}")
    from worker.pretraining.model_files import BaseModelError

    with pytest.raises(BaseModelError, match="not-bert"):
        compare_models(
            [two_models[0], ModelToEvaluate("not-bert", tmp_path)],
            train,
            test,
            config,
            progress=lambda _: never(),
        )
