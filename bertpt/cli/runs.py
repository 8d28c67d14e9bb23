"""``bertpt runs``: submit a continual pre-training run to the service and watch it, read its metrics and
events, download its model or a checkpoint, compare runs, draw their curves.

``runs create`` takes the same hyperparameter options as ``bertpt train`` (generated from the one schema,
:class:`~worker.pretraining.hyperparameters.Hyperparameters`); precedence: the server's defaults <
``--config run.json`` < the options given.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Literal, cast

import click
from rich.console import Console
from rich.table import Table

from app.runs.schemas import MetricSplit, RunPublic
from bertpt.cli.context import (
    ClientGroup,
    WholeWordTable,
    client_from,
    console,
    fmt,
    fmt_seconds,
    json_option,
    print_json,
    transfer_bar,
)
from bertpt.cli.corpora import print_warnings, upload_corpus
from bertpt.cli.follow import follow_run, follow_run_json
from bertpt.cli.render import (
    baseline_final_table,
    checkpoints_table,
    comparison_tables,
    differing_settings,
    eval_instances,
    series_table,
)
from bertpt.cli.run_config import RUN_CONFIG_RULE, read_run_config
from bertpt.client import Client
from worker.pretraining.cli_options import schema_options, schema_overrides
from worker.pretraining.hyperparameters import Hyperparameters

__all__ = ["runs"]

_FOLLOW_HELP = (
    "Exit code when following: 0 the run succeeded, 1 it failed, 2 it was cancelled; 3 the API refused a "
    "request or could not be reached; 130 you stopped following with Ctrl-C (the run goes on)."
)
_CORPUS_HELP = "a corpus id (corp_...) or a local file, uploaded first"


@click.group("runs", cls=ClientGroup)
def runs() -> None:
    """Continual pre-training runs on the server: submit, follow live, inspect, download, compare."""


# -- submit ---------------------------------------------------------------------------------------------


def _corpus_id(client: Client, value: str | None) -> str | None:
    """A corpus option's id: the value itself, or the id of the local file it names once uploaded (told on
    stderr, with the corpus's warnings, so that ``--json`` output stays one document)."""
    if value is None or not Path(value).is_file():
        return value
    corpus = upload_corpus(client, Path(value))
    notes = Console(stderr=True, highlight=False, soft_wrap=True)
    notes.print(f"uploaded {value} as corpus {corpus.id}", markup=False)
    print_warnings(notes, corpus.warnings)
    return corpus.id


def _given_hyperparameters_table(run: RunPublic, given: dict[str, Any]) -> Table:
    table = WholeWordTable("hyperparameter", "value", title="hyperparameters given", title_justify="left")
    for name in run.hyperparameters:
        if name in given:
            table.add_row(name, fmt(run.hyperparameters[name]))
    others = len(run.hyperparameters) - table.row_count
    table.caption = f"{others} others at their defaults: `bertpt runs show {run.id}` lists them all."
    table.caption_justify = "left"
    return table


def _resources(configured: Any, resource_class: str | None, devices: int | None) -> dict[str, Any]:
    """The body's ``resources``: those of the ``--config`` body (if any) with ``--resource-class`` and
    ``--devices`` over them. Raises click.UsageError when no class is given either way."""
    resources = dict(configured) if isinstance(configured, dict) else {}
    if resource_class is not None:
        resources.pop("resource_class", None)  # RunResources's field name, beside its alias "class"
        resources["class"] = resource_class
    if devices is not None:
        resources["devices"] = devices
    if "class" not in resources and "resource_class" not in resources:
        raise click.UsageError(
            "--devices needs --resource-class (cpu or gpu), or resources.class in --config"
        )
    return resources


@runs.command("create", epilog=_FOLLOW_HELP)
@click.option(
    "--base", "base_model", help="Base model: a built-in model, hf:<repo>, checkpoint:<id>, run:<id>."
)
@click.option("--corpus", help=f"The training corpus: {_CORPUS_HELP}.")
@click.option("--eval-corpus", help=f"Separate held-out domain text: {_CORPUS_HELP}.")
@click.option(
    "--reference-corpus", help=f"General-domain text evaluated to watch forgetting: {_CORPUS_HELP}."
)
@click.option("--replay-corpus", help=f"General-domain text replayed (needs --replay-ratio): {_CORPUS_HELP}.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Run-config JSON: {RUN_CONFIG_RULE}. The options given win over it.",
)
@click.option(
    "--resource-class",
    type=click.Choice(["cpu", "gpu"]),
    help="Which workers may take the run: those of the queue TRAINING_QUEUE.<class> (default: the server's "
    "DEFAULT_RESOURCE_CLASS).",
)
@click.option(
    "--devices",
    type=click.IntRange(1, 64),
    help="Devices the run trains on (GPUs, or CPU processes; default 1); needs --resource-class (or "
    "resources.class in --config). "
    "--batch-size is split over them.",
)
@click.option("--name", help="Display name (default: base model and corpus).")
@click.option("--follow", is_flag=True, help="Follow the run live until it ends (as `runs follow`).")
@json_option
@schema_options(Hyperparameters)
@click.pass_context
def create_command(
    ctx: click.Context,
    base_model: str | None,
    corpus: str | None,
    eval_corpus: str | None,
    reference_corpus: str | None,
    replay_corpus: str | None,
    config_path: Path | None,
    resource_class: str | None,
    devices: int | None,
    name: str | None,
    follow: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Submit a run: continue pre-training a base model (masked LM + next-sentence prediction) on a corpus.
    Prints the hyperparameters given as the server echoed them, and the expected duration."""
    body, hyperparameters = read_run_config(config_path)
    if resource_class is not None or devices is not None:
        body["resources"] = _resources(body.get("resources"), resource_class, devices)
    given = schema_overrides(Hyperparameters, options)
    hyperparameters |= given
    out = console()
    client = client_from(ctx)
    chosen = {
        "name": name,
        "base_model": base_model,
        "corpus_id": _corpus_id(client, corpus),
        "eval_corpus_id": _corpus_id(client, eval_corpus),
        "reference_corpus_id": _corpus_id(client, reference_corpus),
        "replay_corpus_id": _corpus_id(client, replay_corpus),
    }
    body |= {key: value for key, value in chosen.items() if value is not None}
    for key, option in (("base_model", "--base"), ("corpus_id", "--corpus")):
        if not body.get(key):
            raise click.UsageError(f"{option} is required (or {key} in --config)")
    run = client.runs.create({**body, "hyperparameters": hyperparameters})
    if as_json and not follow:
        print_json(run)
        return
    if not as_json:
        eta = f"; expected to end in about {fmt_seconds(run.eta_seconds)}" if run.eta_seconds else ""
        out.print(f"created run {run.id} ({run.name}): {run.status}{eta}", markup=False)
        out.print(_given_hyperparameters_table(run, hyperparameters))
    if follow:
        sys.exit(follow_run_json(client, run.id) if as_json else follow_run(client, run.id, out))
    out.print(f"follow it: bertpt runs follow {run.id}", markup=False)


# -- read -----------------------------------------------------------------------------------------------


def _progress_text(run: RunPublic) -> str:
    step, total = run.progress.step, run.progress.total_steps
    if step is None and total is None:
        return "-"
    return f"{step or 0}/{total if total is not None else '-'}"


def _resources_text(run: RunPublic) -> str | None:
    """``gpu, 2 devices``: what the run asked for; None when the API did not say."""
    if run.resources is None:
        return None
    devices = run.resources.devices
    return f"{run.resources.resource_class}, {devices} device{'s' if devices != 1 else ''}"


@runs.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="Only runs in this status (repeat): queued, preparing, running, cancelling, succeeded, failed, "
    "cancelled.",
)
@json_option
@click.pass_context
def list_command(ctx: click.Context, statuses: tuple[str, ...], as_json: bool) -> None:
    """Every run, newest first."""
    found = client_from(ctx).runs.list(status=list(statuses) or None)
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable("id", "name", "status", "step", "ETA", "base model", "created")
    for run in found:
        table.add_row(
            run.id,
            run.name,
            str(run.status),
            _progress_text(run),
            fmt_seconds(run.eta_seconds),
            run.base_model,
            f"{run.created_at:%Y-%m-%d %H:%M}",
        )
    console().print(table)


@runs.command("show")
@click.argument("run_id")
@json_option
@click.pass_context
def show_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """A run: status, resources and queue (why it waits, while queued), progress, ETA, error, warnings,
    every hyperparameter, baseline vs final metrics."""
    client = client_from(ctx)
    run = client.runs.get(run_id)
    if as_json:
        print_json(run)
        return
    out = console()
    out.print(f"run {run.id} ({run.name}): {run.status}, attempt {run.attempt}", markup=False)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for label, value in (
        ("base model", run.base_model),
        ("corpus", run.corpus_id),
        ("eval corpus", run.eval_corpus_id),
        ("reference corpus", run.reference_corpus_id),
        ("replay corpus", run.replay_corpus_id),
        ("resources", _resources_text(run)),
        ("queue", run.queue),
        ("progress", _progress_text(run)),
        ("ETA", fmt_seconds(run.eta_seconds)),
        ("tokens seen", fmt(run.progress.tokens_seen)),
        ("created", f"{run.created_at:%Y-%m-%d %H:%M:%S}"),
        ("finished", f"{run.finished_at:%Y-%m-%d %H:%M:%S}" if run.finished_at else "-"),
    ):
        if value is not None:
            facts.add_row(label, str(value))
    out.print(facts)
    if run.waiting_reason:
        out.print(f"waiting: {run.waiting_reason}", style="yellow", markup=False)
    if run.error is not None:
        out.print(f"error ({run.error.type}): {run.error.message}", style="red", markup=False)
    for warning in run.warnings:
        out.print(f"warning [{warning.get('code')}]: {warning.get('message')}", style="yellow", markup=False)
    table = WholeWordTable("hyperparameter", "value", title="hyperparameters", title_justify="left")
    for name, value in run.hyperparameters.items():
        table.add_row(name, fmt(value))
    out.print(table)
    out.print(baseline_final_table(run, instances=eval_instances(client.runs.events(run.id))))


@runs.command("follow", epilog=_FOLLOW_HELP)
@click.argument("run_id")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the live events as JSON lines {id, event, data}."
)
@click.pass_context
def follow_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Watch a run live until it ends: status, a progress bar with step/total and ETA, the latest losses
    and accuracies, its events; then the baseline-vs-final table. A dropped connection is resumed where it
    stopped (Last-Event-ID): no step missed or shown twice."""
    client = client_from(ctx)
    sys.exit(follow_run_json(client, run_id) if as_json else follow_run(client, run_id, console()))


@runs.command("metrics")
@click.argument("run_id")
@click.option("--split", type=click.Choice(["train", "eval", "reference"]), help="Only this split.")
@click.option("--name", "names", multiple=True, help="Only this metric (repeat), e.g. loss, masked_lm_loss.")
@click.option(
    "--max-points", type=click.IntRange(min=2), help="Points per series (server-side downsampling)."
)
@click.option("--csv", "as_csv", is_flag=True, help="Print split,name,step,value rows (CSV) for every point.")
@json_option
@click.pass_context
def metrics_command(
    ctx: click.Context,
    run_id: str,
    split: str | None,
    names: tuple[str, ...],
    max_points: int | None,
    as_csv: bool,
    as_json: bool,
) -> None:
    """A run's metric curves: a summary per series (first, last, min, max), or every point with --csv."""
    metrics = client_from(ctx).runs.metrics(
        run_id,
        split=cast(MetricSplit | None, split),
        max_points=max_points,
        names=list(names) or None,
    )
    if as_json:
        print_json(metrics)
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["split", "name", "step", "value"])
        for series in metrics.series:
            for step, value in series.points:
                writer.writerow([series.split, series.name, step, "" if value is None else repr(value)])
        return
    console().print(series_table(metrics))


@runs.command("events")
@click.argument("run_id")
@json_option
@click.pass_context
def events_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """A run's lifecycle events, oldest first."""
    events = client_from(ctx).runs.events(run_id)
    if as_json:
        print_json({"data": events})
        return
    out = console()
    for event in events:
        style = {"warning": "yellow", "error": "red"}.get(event.level)
        out.print(
            f"{event.created_at:%Y-%m-%d %H:%M:%S} {event.type}: {event.message}", style=style, markup=False
        )


@runs.command("checkpoints")
@click.argument("run_id")
@json_option
@click.pass_context
def checkpoints_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """A run's kept checkpoints (download one with `runs download ID --step N`)."""
    checkpoints = client_from(ctx).runs.checkpoints(run_id)
    if as_json:
        print_json({"data": checkpoints})
        return
    console().print(checkpoints_table(checkpoints))


@runs.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@json_option
@click.pass_context
def compare_command(ctx: click.Context, run_ids: tuple[str, ...], as_json: bool) -> None:
    """Runs side by side: each evaluation metric's baseline -> final per run (each change marked better or
    worse), and the settings that differ between them."""
    client = client_from(ctx)
    found = [client.runs.get(run_id) for run_id in run_ids]
    if as_json:
        print_json({"runs": found, "differing_settings": differing_settings(found)})
        return
    metrics, settings = comparison_tables(found)
    out = console()
    out.print(metrics)
    if settings is not None:
        out.print(settings)
    elif len(found) > 1:
        out.print("same base model, corpora and hyperparameters")


# -- change ---------------------------------------------------------------------------------------------


@runs.command("cancel")
@click.argument("run_id")
@json_option
@click.pass_context
def cancel_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Cancel a run: a queued one at once, a running one at the end of its step (with a checkpoint)."""
    run = client_from(ctx).runs.cancel(run_id)
    if as_json:
        print_json(run)
        return
    click.echo(f"run {run.id}: {run.status}")


@runs.command("resume")
@click.argument("run_id")
@json_option
@click.pass_context
def resume_command(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Continue a failed or cancelled run from its newest checkpoint."""
    run = client_from(ctx).runs.resume(run_id)
    if as_json:
        print_json(run)
        return
    click.echo(f"run {run.id}: {run.status} (it resumes from its newest checkpoint)")


@runs.command("delete")
@click.argument("run_id")
@click.pass_context
def delete_command(ctx: click.Context, run_id: str) -> None:
    """Delete a finished run with its model, checkpoints and metrics."""
    client_from(ctx).runs.delete(run_id)
    click.echo(f"deleted run {run_id}")


# -- files ----------------------------------------------------------------------------------------------


@runs.command("download")
@click.argument("run_id")
@click.option(
    "--step", type=click.IntRange(min=0), help="A kept checkpoint's step (default: the final model)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder the archive is saved and extracted in.",
)
@click.option(
    "--include-optimizer",
    is_flag=True,
    help="Include the optimizer, scheduler and RNG state (what resuming needs; often twice the weights).",
)
@click.option("--no-extract", is_flag=True, help="Keep the .tar without extracting it.")
@click.pass_context
def download_command(
    ctx: click.Context,
    run_id: str,
    step: int | None,
    out_dir: Path,
    include_optimizer: bool,
    no_extract: bool,
) -> None:
    """Download a run's final model (or a checkpoint): a progress bar, resumed where it stopped when run
    again after an interruption, its sha256 verified, extracted safely; prints the from_pretrained line."""
    client = client_from(ctx)
    what = f"step {step} of {run_id}" if step is not None else f"the model of {run_id}"
    with transfer_bar(f"downloading {what}") as progress:
        download = client.runs.download(
            run_id,
            out_dir,
            step=step,
            include_optimizer=include_optimizer,
            progress=progress,
            extract=not no_extract,
        )
    checked = "verified" if download.verified else "the server had no digest of it yet to check against"
    click.echo(f"{download.archive} (sha256 {download.sha256}, {checked})")
    if download.directory is not None:
        click.echo(f"extracted to {download.directory}")
        click.echo("load it with:")
        click.echo("    from transformers import BertForPreTraining")
        click.echo(f'    model = BertForPreTraining.from_pretrained("{download.directory}")')


@runs.command("plot")
@click.argument("run_id")
@click.option("--format", "image_format", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write (default: <run id>.<format>).",
)
@click.pass_context
def plot_command(
    ctx: click.Context, run_id: str, image_format: Literal["png", "svg"], out_file: Path | None
) -> None:
    """Draw a run's loss and evaluation curves, with the baseline and the reference corpus, for a report."""
    image = client_from(ctx).runs.plot(run_id, format=image_format)
    target = out_file or Path(f"{run_id}.{image_format}")
    target.write_bytes(image)
    click.echo(f"wrote {target} ({len(image):,} bytes)")
