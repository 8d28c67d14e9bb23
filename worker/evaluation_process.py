"""The evaluation process: one evaluation's :func:`~worker.evaluation.compare.compare_models` in a child
of the Celery task, started with ``spawn`` and supervised like a training
(:func:`worker.supervision.supervise_child`).

It reads the dataset's files (the test file, else a stratified split of the training file with the
hyperparameters' ``test_fraction`` and fixed ``split_seed``, so every model and every rerun is scored on
the same test examples), finds each model's directory (``hf:`` models are downloaded here), and compares
them. It talks to its supervisor through a queue of :data:`EvaluationMessage` objects: an
:class:`~worker.evaluation.results.EvaluationProgress` after each (model, seed) fit, then its end: a
:class:`~worker.evaluation.results.ComparisonResult`, :class:`EvaluationStopped` (it stopped on the stop
event: a cancel request, or its supervisor gone), or a :class:`~worker.failures.RunFailure` (it raised:
the exception mapped for the user by :func:`describe_evaluation_failure`, the traceback for the worker log
only). Error types:

- ``dataset_format_error``: a file of the dataset cannot be read (with ``file``, ``line``, ``field``);
- ``base_model_error``: a model cannot be loaded or does not fit the data;
- ``evaluation_error``: the dataset and the models cannot be compared as asked (a test label the training
  part lacks...);
- ``out_of_memory``: retried like a training's (up to ``MAX_ATTEMPTS``), then failed;
- ``evaluation_process_died``: the process ended without a word (killed), retried the same way;
- ``input_error`` (the supervisor's: the dataset or a model is gone), ``worker_lost`` (the reaper's),
  ``internal_error`` (anything else: the details are in the worker log).
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.evaluation.labelled import DatasetFormatError
from worker.evaluation.results import ComparisonResult, EvaluationProgress
from worker.failures import RunFailure, is_out_of_memory, scrub_paths
from worker.job import EvaluationJob
from worker.pretraining.model_files import BaseModelError
from worker.training_process import _Event, _Queue, configure_child_process, exit_now

__all__ = [
    "RETRIED_EVALUATION_FAILURES",
    "EvaluationMessage",
    "EvaluationStopped",
    "describe_evaluation_failure",
    "evaluate",
    "run_evaluation_job",
]

# Not the owner's doing: the next attempt starts over (up to MAX_ATTEMPTS), as for a training.
RETRIED_EVALUATION_FAILURES = frozenset({"evaluation_process_died", "out_of_memory"})


@dataclass(frozen=True)
class EvaluationStopped:
    """The comparison stopped on the stop event, between or within fits."""


EvaluationMessage = EvaluationProgress | ComparisonResult | EvaluationStopped | RunFailure


def run_evaluation_job(job: EvaluationJob, messages: _Queue, stop: _Event) -> None:
    """The child process's entry point: evaluate ``job``, report through ``messages``."""
    configure_child_process(f"evaluation {job.evaluation_id}", hf_hub_offline=job.hf_hub_offline)
    supervisor = os.getppid()

    def should_stop() -> bool:
        return stop.is_set() or os.getppid() != supervisor

    from worker.evaluation.compare import EvaluationCancelled

    try:
        result = evaluate(job, progress=messages.put, should_stop=should_stop)
    except (SystemExit, KeyboardInterrupt):
        raise
    except EvaluationCancelled:
        messages.put(EvaluationStopped())
        exit_now(messages)
    except BaseException as exc:
        failure = describe_evaluation_failure(exc, job)
        messages.put(dataclasses.replace(failure, traceback=traceback.format_exc()))
        exit_now(messages)
    messages.put(result)
    exit_now(messages)


def evaluate(
    job: EvaluationJob,
    *,
    progress: Callable[[EvaluationProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ComparisonResult:
    """Read the dataset, split it when it has no test file, resolve the models' directories, compare."""
    from worker.evaluation.compare import ModelToEvaluate, compare_models
    from worker.evaluation.labelled import read_labelled_dataset, stratified_split
    from worker.evaluation.settings import EvaluationConfig
    from worker.pretraining.base_model import resolve_base

    config = EvaluationConfig.model_validate(job.config)
    # The files were held to the upload's size cap: no cap here.
    dataset = read_labelled_dataset(Path(job.train_path), name=job.train_name, max_bytes=None)
    if job.test_path is not None:
        test_file = read_labelled_dataset(
            Path(job.test_path), name=job.test_name, known_labels=dataset.labels, max_bytes=None
        )
        train, test = list(dataset.examples), list(test_file.examples)
    else:
        h = config.hyperparameters
        train, test = stratified_split(dataset.examples, h.test_fraction, h.split_seed)
    models = [ModelToEvaluate(model.name, resolve_base(model.source)) for model in job.models]
    return compare_models(models, train, test, config, progress=progress, should_stop=should_stop)


def describe_evaluation_failure(exc: BaseException, job: EvaluationJob) -> RunFailure:
    """Map an exception raised by :func:`evaluate` for ``job`` to what its owner is told, in the
    evaluation's own terms (the dataset's id and file names, the models' specs), never the worker's
    paths."""
    replacements = {model.source: model.name for model in job.models if Path(model.source).is_absolute()}
    replacements[job.train_path] = f"dataset {job.dataset_id} ({job.train_name})"
    if job.test_path is not None:
        replacements[job.test_path] = f"dataset {job.dataset_id} ({job.test_name})"

    def clean(text: str) -> str:
        return scrub_paths(text, replacements)

    if isinstance(exc, DatasetFormatError):
        details = {"file": exc.file, "line": exc.line, "field": exc.field}
        return RunFailure("dataset_format_error", f"dataset {job.dataset_id}: {clean(str(exc))}", details)
    if isinstance(exc, BaseModelError):
        return RunFailure("base_model_error", clean(str(exc)))
    if is_out_of_memory(exc):
        where = "host" if isinstance(exc, MemoryError) else "device"
        hyperparameters = job.config.get("hyperparameters") or {}
        return RunFailure(
            "out_of_memory",
            f"the evaluation ran out of {where} memory (batch_size {hyperparameters.get('batch_size')}, "
            f"max_seq_length {hyperparameters.get('max_seq_length') or 'from the data'}). Lower batch_size "
            "or set a smaller max_seq_length, and submit it again.",
        )
    if isinstance(exc, ValueError):  # compare_models: what cannot be compared as asked
        return RunFailure("evaluation_error", clean(str(exc)))
    return RunFailure(
        "internal_error",
        f"the evaluation stopped on an internal error ({type(exc).__name__}); the operators can find the "
        f"details in the worker log under evaluation {job.evaluation_id}",
    )
