"""``bertpt evaluate``: compare models on a labelled dataset locally (no server), with the library the workers
run (:func:`worker.evaluation.compare.compare_models`).

Precedence of the settings: the defaults of :class:`EvaluationConfig` < ``--config FILE`` < the options
given. ``--config`` holds either the hyperparameters as one JSON object (``{"learning_rate": 2e-5}``) or an
evaluation config (``{"method": "probe", "seeds": 3, "hyperparameters": {...}}``, the shape of the REST
body's fields). A model is a local Hugging Face directory, a built-in model's name or a hub id, resolved as
``bertpt train --base`` resolves its base. Without ``--test``, ``test_fraction`` of the dataset is held out
by a stratified split drawn with ``split_seed`` (default 0), the same for every model and every rerun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.evaluation.labelled import (
    DatasetFormatError,
    LabelledExample,
    read_labelled_dataset,
    stratified_split,
)
from worker.evaluation.results import TABLE_HEADERS, ComparisonResult, EvaluationProgress
from worker.evaluation.settings import MAX_SEEDS, EvaluationConfig, EvaluationHyperparameters
from worker.pretraining.builtin_models import BUILTIN_MODELS
from worker.pretraining.cli import fail
from worker.pretraining.cli_options import schema_options, schema_overrides

__all__ = ["comparison_table", "evaluate_command", "load_evaluation_config"]

# Exit codes as `bertpt train`'s: 2 for settings or models given wrong, 1 for a dataset that cannot be used.
EXIT_CONFIG = 2
EXIT_DATA = 1


class EvaluationConfigError(ValueError):
    """Settings that do not validate; the message names every bad field in one line."""


def _validation_message(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "config"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting {field!r} (see `bertpt evaluate --help`)")
        else:
            problems.append(f"{field}: {error['msg']}")
    return f"{source}: " + "; ".join(problems)


def load_evaluation_config(
    path: Path | None,
    *,
    method: str | None = None,
    seeds: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> EvaluationConfig:
    """The evaluation config from ``path`` (hyperparameters, or method/seeds/hyperparameters; see the module
    docstring), then ``method``, ``seeds`` and the hyperparameter ``overrides`` when given. Raises
    EvaluationConfigError naming the file and the fields."""
    values: dict[str, Any] = {}
    hyperparameters: dict[str, Any] = {}
    source = str(path) if path is not None else "options"
    if path is not None:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationConfigError(f"{path}: cannot read the config: {exc}") from None
        if not isinstance(loaded, dict):
            raise EvaluationConfigError(f"{path}: the config must be a JSON object")
        if "hyperparameters" in loaded:
            values = {k: v for k, v in loaded.items() if k != "hyperparameters"}
            hyperparameters = loaded["hyperparameters"]
            if not isinstance(hyperparameters, dict):
                raise EvaluationConfigError(f"{path}: hyperparameters must be a JSON object")
        else:
            hyperparameters = loaded
    if method is not None:
        values["method"] = method
    if seeds is not None:
        values["seeds"] = seeds
    try:
        return EvaluationConfig(**values, hyperparameters={**hyperparameters, **(overrides or {})})
    except ValidationError as exc:
        given = "options" if path is None else f"{source} and options"
        raise EvaluationConfigError(_validation_message(exc, given)) from None


def _read_examples(
    dataset: Path, test: Path | None, config: EvaluationConfig
) -> tuple[list[LabelledExample], list[LabelledExample]]:
    """(train, test) examples: ``test``'s when given (its labels must be the dataset's), else a seeded
    stratified split of the dataset. Raises DatasetFormatError."""
    data = read_labelled_dataset(dataset)
    if test is None:
        h = config.hyperparameters
        return stratified_split(data.examples, h.test_fraction, seed=h.split_seed)
    held_out = read_labelled_dataset(test, known_labels=data.labels)
    if held_out.has_text_pair != data.has_text_pair:
        which = "has" if data.has_text_pair else "has no"
        raise DatasetFormatError(
            f"the training file {which} a text_pair column and the test file must match it", test.name
        )
    return list(data.examples), list(held_out.examples)


def comparison_table(result: ComparisonResult) -> Table:
    """Per model: mean ± sd of accuracy and macro-F1 (percent), and the paired difference to the first model
    with its 95% interval (percentage points; ``*`` when it excludes 0)."""
    table = Table(title=f"bertpt evaluate: {result.summary_line()}")
    for i, header in enumerate(TABLE_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in result.table_rows():
        table.add_row(*row)
    return table


@click.command("evaluate")
@click.option(
    "--dataset",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labelled dataset (.tsv, .csv or .jsonl; columns text, label and optionally text_pair).",
)
@click.option(
    "--test",
    "test_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Separate test file of the same format; default: a stratified split of --dataset (test_fraction, "
    "split_seed).",
)
@click.option(
    "--model",
    "models",
    required=True,
    multiple=True,
    help="A model to compare (repeat; the first is the baseline of the differences): a local Hugging Face "
    f"directory, a built-in model ({', '.join(BUILTIN_MODELS)}) or a hub id.",
)
@click.option(
    "--method",
    type=click.Choice(["finetune", "probe"]),
    default=None,
    help="finetune (default): BertForSequenceClassification per model and seed; probe: logistic regression "
    "on frozen mean-pooled features.",
)
@click.option(
    "--seeds",
    type=click.IntRange(1, MAX_SEEDS),
    default=None,
    help="Seeds 0..N-1, the same for every model (default 5).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON with the hyperparameters (or method, seeds and hyperparameters).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@schema_options(EvaluationHyperparameters)
def evaluate_command(
    dataset: Path,
    test_path: Path | None,
    models: tuple[str, ...],
    method: str | None,
    seeds: int | None,
    config_path: Path | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Fine-tune (or probe) each model with the same seeds on a labelled dataset and compare them: accuracy
    and macro-F1 mean ± sd over seeds, and each model's paired difference to the first with a 95% interval."""
    from worker.evaluation.compare import ModelToEvaluate, compare_models
    from worker.pretraining.base_model import resolve_base
    from worker.pretraining.model_files import BaseModelError

    if len(set(models)) != len(models):
        fail(f"--model: each model once (got {', '.join(models)})", EXIT_CONFIG)
    try:
        config = load_evaluation_config(
            config_path,
            method=method,
            seeds=seeds,
            overrides=schema_overrides(EvaluationHyperparameters, options),
        )
    except EvaluationConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    try:
        train, test = _read_examples(dataset, test_path, config)
    except DatasetFormatError as exc:
        fail(str(exc), EXIT_DATA)
    try:
        to_evaluate = [ModelToEvaluate(name=model, path=resolve_base(model)) for model in models]
    except BaseModelError as exc:
        fail(str(exc), EXIT_CONFIG)

    console = Console(stderr=True)
    with Progress(
        TextColumn(f"[bold]{config.method}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(to_evaluate[0].name, total=len(to_evaluate) * config.seeds)

        def on_progress(update: EvaluationProgress) -> None:
            bar.update(task, completed=update.done, description=f"{update.model} seed {update.seed}")

        try:
            result = compare_models(to_evaluate, train, test, config, progress=on_progress)
        except BaseModelError as exc:
            fail(str(exc), EXIT_CONFIG)
        except ValueError as exc:
            fail(f"{dataset}: {exc}", EXIT_DATA)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    Console(soft_wrap=True).print(comparison_table(result))
    if len(result.models) > 1 and len(result.seeds) > 1:
        console.print("*: the 95% interval of the paired difference over seeds excludes 0", style="dim")
