"""``bertpt evaluations`` (did continual pre-training help? models compared on a labelled dataset by a
worker) and ``bertpt datasets`` (the labelled datasets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from app.datasets.schemas import DatasetPublic
from app.evaluations.schemas import EvaluationPublic
from bertpt.cli.context import (
    ClientGroup,
    WholeWordTable,
    client_from,
    console,
    fmt,
    json_option,
    print_json,
    transfer_bar,
)
from worker.evaluation.results import TABLE_HEADERS
from worker.evaluation.settings import MAX_SEEDS, EvaluationHyperparameters
from worker.pretraining.cli_options import schema_options, schema_overrides

__all__ = ["datasets", "evaluations"]


# -- evaluations ----------------------------------------------------------------------------------------


@click.group("evaluations", cls=ClientGroup)
def evaluations() -> None:
    """Evaluations on the server: models fine-tuned (or probed) on a labelled dataset with the same seeds,
    compared with paired 95% intervals."""


def _print_evaluation(evaluation: EvaluationPublic) -> None:
    out = console()
    progress = evaluation.progress
    done = f", {progress.done}/{progress.total} fits" if progress.total else ""
    out.print(
        f"evaluation {evaluation.id}: {evaluation.status}{done} ({evaluation.method}, "
        f"{evaluation.seeds} seeds, dataset {evaluation.dataset_id})",
        markup=False,
    )
    for model in evaluation.models:
        out.print(f"  model {model}", markup=False)
    if evaluation.error is not None:
        out.print(f"error ({evaluation.error.type}): {evaluation.error.message}", style="red", markup=False)
    if evaluation.result is not None:
        table = WholeWordTable(title=evaluation.result.summary_line(), title_justify="left")
        for i, header in enumerate(TABLE_HEADERS):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in evaluation.result.table_rows():
            table.add_row(*row)
        out.print(table)


@evaluations.command("create")
@click.option("--dataset", "dataset_id", required=True, help="The labelled dataset's id (ds_...).")
@click.option(
    "--model",
    "models",
    required=True,
    multiple=True,
    help="A model to compare (repeat; the first is the baseline): a built-in model, hf:<repo>, "
    "checkpoint:<id>, run:<id> or run:<id>@<step>.",
)
@click.option("--method", type=click.Choice(["finetune", "probe"]), help="finetune (default) or probe.")
@click.option("--seeds", type=click.IntRange(1, MAX_SEEDS), help="Seeds 0..N-1 (default 5).")
@json_option
@schema_options(EvaluationHyperparameters)
@click.pass_context
def create_command(
    ctx: click.Context,
    dataset_id: str,
    models: tuple[str, ...],
    method: str | None,
    seeds: int | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Queue an evaluation of the models on a labelled dataset (the same options as `bertpt evaluate`)."""
    body: dict[str, Any] = {"dataset_id": dataset_id, "models": list(models)}
    if method is not None:
        body["method"] = method
    if seeds is not None:
        body["seeds"] = seeds
    body["hyperparameters"] = schema_overrides(EvaluationHyperparameters, options)
    evaluation = client_from(ctx).evaluations.create(body)
    if as_json:
        print_json(evaluation)
        return
    _print_evaluation(evaluation)


@evaluations.command("list")
@json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every evaluation, newest first."""
    found = client_from(ctx).evaluations.list()
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable("id", "status", "method", "seeds", "models", "dataset", "created")
    for evaluation in found:
        table.add_row(
            evaluation.id,
            str(evaluation.status),
            str(evaluation.method),
            str(evaluation.seeds),
            ", ".join(evaluation.models),
            evaluation.dataset_id or "-",
            f"{evaluation.created_at:%Y-%m-%d %H:%M}",
        )
    console().print(table)


@evaluations.command("show")
@click.argument("evaluation_id")
@json_option
@click.pass_context
def show_command(ctx: click.Context, evaluation_id: str, as_json: bool) -> None:
    """An evaluation: its progress, and once it succeeded the comparison table."""
    evaluation = client_from(ctx).evaluations.get(evaluation_id)
    if as_json:
        print_json(evaluation)
        return
    _print_evaluation(evaluation)


@evaluations.command("cancel")
@click.argument("evaluation_id")
@json_option
@click.pass_context
def cancel_command(ctx: click.Context, evaluation_id: str, as_json: bool) -> None:
    """Cancel an evaluation."""
    evaluation = client_from(ctx).evaluations.cancel(evaluation_id)
    if as_json:
        print_json(evaluation)
        return
    click.echo(f"evaluation {evaluation.id}: {evaluation.status}")


@evaluations.command("delete")
@click.argument("evaluation_id")
@click.pass_context
def delete_command(ctx: click.Context, evaluation_id: str) -> None:
    """Delete a finished evaluation."""
    client_from(ctx).evaluations.delete(evaluation_id)
    click.echo(f"deleted evaluation {evaluation_id}")


# -- datasets -------------------------------------------------------------------------------------------


@click.group("datasets", cls=ClientGroup)
def datasets() -> None:
    """Labelled datasets on the server (.tsv, .csv or .jsonl with text, label and optionally text_pair)."""


def _dataset_line(dataset: DatasetPublic) -> str:
    labels = ", ".join(f"{label.label} {label.examples}" for label in dataset.labels)
    test = f", test file {dataset.test_examples} examples" if dataset.has_test_file else ""
    return f"dataset {dataset.id} ({dataset.name}): {dataset.examples:,} examples ({labels}){test}"


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@datasets.command("upload")
@click.argument("file", type=_FILE)
@click.option("--test", "test_file", type=_FILE, help="A separate test file of the same shape.")
@click.option("--name", help="Display name (default: the file name without extension).")
@json_option
@click.pass_context
def upload_dataset_command(
    ctx: click.Context, file: Path, test_file: Path | None, name: str | None, as_json: bool
) -> None:
    """Upload a labelled dataset (and optionally its test file)."""
    with transfer_bar(f"uploading {file.name}") as progress:
        dataset = client_from(ctx).datasets.upload(file, test_file=test_file, name=name, progress=progress)
    if as_json:
        print_json(dataset)
        return
    click.echo(_dataset_line(dataset))


@datasets.command("list")
@json_option
@click.pass_context
def list_datasets_command(ctx: click.Context, as_json: bool) -> None:
    """Every labelled dataset, newest first."""
    found = client_from(ctx).datasets.list()
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable("id", "name", "format", "examples", "labels", "test file", "created")
    for dataset in found:
        table.add_row(
            dataset.id,
            dataset.name,
            str(dataset.format),
            fmt(dataset.examples),
            fmt(len(dataset.labels)),
            fmt(dataset.test_examples) if dataset.has_test_file else "-",
            f"{dataset.created_at:%Y-%m-%d %H:%M}",
        )
    console().print(table)


@datasets.command("show")
@click.argument("dataset_id")
@json_option
@click.pass_context
def show_dataset_command(ctx: click.Context, dataset_id: str, as_json: bool) -> None:
    """A labelled dataset: its examples per label."""
    dataset = client_from(ctx).datasets.get(dataset_id)
    if as_json:
        print_json(dataset)
        return
    click.echo(_dataset_line(dataset))


@datasets.command("delete")
@click.argument("dataset_id")
@click.pass_context
def delete_dataset_command(ctx: click.Context, dataset_id: str) -> None:
    """Delete a labelled dataset."""
    client_from(ctx).datasets.delete(dataset_id)
    click.echo(f"deleted dataset {dataset_id}")
