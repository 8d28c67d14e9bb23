"""Compare models on a labelled task: every model fine-tuned (or probed) with the same seeds on the same
training examples and scored on the same test examples, so their differences can be taken seed by seed.

``compare_models`` runs ``len(models) * config.seeds`` fits in the order model by model, seed by seed,
reports progress after each, and summarizes accuracy and macro-F1 (scikit-learn's ``f1_score(average=
"macro")``: the unweighted mean of the per-label F1 over the labels of the test examples and of the
predictions) per model, with the paired difference of each model to the first and its 95% t interval.
Label indices follow the sorted label names of the training examples. Runs on CUDA when available, else the
CPU; with the same inputs and seeds it gives the same numbers on the same machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.evaluation.encoding import (
    CheckedModel,
    EncodedExamples,
    check_model_dir,
    encode,
    evaluation_device,
    resolve_max_length,
)
from worker.evaluation.finetune import finetune_and_predict
from worker.evaluation.labelled import LabelledExample
from worker.evaluation.probe import mean_pooled_features, probe_predict
from worker.evaluation.results import ComparisonResult, EvaluationProgress, ModelResult
from worker.evaluation.settings import EvaluationConfig, seed_values
from worker.evaluation.stats import paired_difference, summarize

__all__ = ["EvaluationCancelled", "ModelToEvaluate", "compare_models"]


@dataclass(frozen=True)
class ModelToEvaluate:
    """``name``: how results call it (a built-in name, ``run:<id>``, a path); ``path``: a Hugging Face
    directory with config.json, safetensors weights and the tokenizer files."""

    name: str
    path: Path


class EvaluationCancelled(RuntimeError):
    """``should_stop`` returned True: the comparison stopped between or within fits."""


@dataclass
class _Scores:
    accuracy: list[float]
    macro_f1: list[float]
    epochs: list[int]


def _check_inputs(
    models: Sequence[ModelToEvaluate], train: Sequence[LabelledExample], test: Sequence[LabelledExample]
) -> list[str]:
    """The sorted label names; ValueError for what cannot be compared."""
    if not models:
        raise ValueError("no models to compare")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    if not train or not test:
        raise ValueError(f"need training and test examples (got {len(train)} and {len(test)})")
    labels = sorted({example.label for example in train})
    if len(labels) < 2:
        raise ValueError("the training examples need at least 2 labels")
    unseen = sorted({example.label for example in test} - set(labels))
    if unseen:
        raise ValueError(f"test labels not in the training examples: {unseen[:5]}")
    pairs = {example.text_pair is not None for example in [*train, *test]}
    if len(pairs) > 1:
        raise ValueError("either every example has a text_pair or none does")
    return labels


def compare_models(
    models: Sequence[ModelToEvaluate],
    train: Sequence[LabelledExample],
    test: Sequence[LabelledExample],
    config: EvaluationConfig,
    *,
    progress: Callable[[EvaluationProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ComparisonResult:
    """Fine-tune (``config.method == "finetune"``) or probe each model with seeds ``0 .. config.seeds-1``
    on ``train`` and score it on ``test``; ``models[0]`` is the baseline of the paired differences.

    ``progress`` gets an :class:`EvaluationProgress` as the first fit starts (``done`` 0) and after each
    (model, seed) fit; ``should_stop`` is polled
    before each fit and after every training or feature batch. Raises EvaluationCancelled when it returns
    True, ValueError for inputs that cannot be compared (fewer than 2 labels, a test label absent from
    ``train``, duplicate model names), BaseModelError for a model directory that cannot be used (all are
    checked before the first fit).
    """
    from sklearn.metrics import accuracy_score, f1_score

    started = time.monotonic()
    labels = _check_inputs(models, train, test)
    index = {label: i for i, label in enumerate(labels)}
    train_labels = [index[example.label] for example in train]
    test_labels = [index[example.label] for example in test]
    h = config.hyperparameters
    seeds = seed_values(config)
    device = evaluation_device()

    def check_cancelled() -> None:
        if should_stop is not None and should_stop():
            raise EvaluationCancelled("the evaluation was cancelled")

    checked = [check_model_dir(model.name, model.path) for model in models]
    total, done = len(models) * len(seeds), 0
    results: list[ModelResult] = []
    baseline: _Scores | None = None
    for model_index, model in enumerate(checked):
        check_cancelled()
        max_length = resolve_max_length(model, train, h.max_seq_length)
        encoded_train, encoded_test = encode(model, train, max_length), encode(model, test, max_length)
        scores = _Scores([], [], [])
        predict = _predictor(
            model, encoded_train, train_labels, encoded_test, len(labels), config, device, check_cancelled
        )
        for seed in seeds:
            check_cancelled()
            if progress is not None and done == 0:  # the total is known before the first fit ends
                progress(EvaluationProgress(model=model.name, model_index=0, seed=seed, done=0, total=total))
            predictions, epochs = predict(seed)
            scores.accuracy.append(float(accuracy_score(test_labels, predictions)))
            scores.macro_f1.append(
                float(f1_score(test_labels, predictions, average="macro", zero_division=0))
            )
            scores.epochs.append(epochs)
            done += 1
            if progress is not None:
                progress(
                    EvaluationProgress(
                        model=model.name, model_index=model_index, seed=seed, done=done, total=total
                    )
                )
        differences = None
        if baseline is not None:
            differences = {
                "accuracy": paired_difference(scores.accuracy, baseline.accuracy),
                "macro_f1": paired_difference(scores.macro_f1, baseline.macro_f1),
            }
        else:
            baseline = scores
        results.append(
            ModelResult(
                model=model.name,
                accuracy=summarize(scores.accuracy),
                macro_f1=summarize(scores.macro_f1),
                difference_vs_first=differences,
                max_seq_length=max_length,
                epochs_trained=scores.epochs if config.method == "finetune" else None,
            )
        )
    return ComparisonResult(
        method=config.method,
        seeds=seeds,
        labels=labels,
        train_examples=len(train),
        test_examples=len(test),
        models=results,
        hyperparameters=h.model_dump(mode="json"),
        runtime_seconds=time.monotonic() - started,
    )


def _predictor(
    model: CheckedModel,
    encoded_train: EncodedExamples,
    train_labels: list[int],
    encoded_test: EncodedExamples,
    num_labels: int,
    config: EvaluationConfig,
    device: torch.device,
    check_cancelled: Callable[[], None],
) -> Callable[[int], tuple[list[int], int]]:
    """``predict(seed) -> (test predictions, epochs trained)`` for the method; the probe's features are
    computed here, once per model (``epochs trained`` is 0 for the probe)."""
    h = config.hyperparameters
    if config.method == "finetune":

        def finetune(seed: int) -> tuple[list[int], int]:
            outcome = finetune_and_predict(
                model, encoded_train, train_labels, encoded_test, num_labels, seed, h, device, check_cancelled
            )
            return outcome.predictions, outcome.epochs_trained

        return finetune

    train_features = mean_pooled_features(model, encoded_train, device, check_cancelled)
    test_features = mean_pooled_features(model, encoded_test, device, check_cancelled)

    def probe(seed: int) -> tuple[list[int], int]:
        predictions = probe_predict(
            train_features,
            train_labels,
            test_features,
            seed,
            folds=h.probe_cv_folds,
            cs=h.probe_cs,
            max_iter=h.probe_max_iter,
        )
        return predictions, 0

    return probe
