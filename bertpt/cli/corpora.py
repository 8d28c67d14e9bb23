"""``bertpt corpora``: upload a training corpus (with a progress bar, and the server's warnings shown), list,
show, analyse with a model's tokenizer, delete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from app.corpora.schemas import CorpusPublic
from app.estimates.schemas import AnalysisPublic
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
from bertpt.cli.run_config import read_run_config
from bertpt.client import Client
from worker.pretraining.cli_options import schema_options, schema_overrides
from worker.pretraining.hyperparameters import Hyperparameters

__all__ = ["corpora", "print_warnings", "upload_corpus"]

# How often a pending analysis is asked for (seconds).
_ANALYSIS_POLL_SECONDS = 1.0


def upload_corpus(client: Client, path: Path, name: str | None = None) -> CorpusPublic:
    """``path`` uploaded with a progress bar on stderr."""
    with transfer_bar(f"uploading {path.name}") as progress:
        return client.corpora.upload(path, name=name, progress=progress)


def print_warnings(out: Console, warnings: list[Any]) -> None:
    """The server's warnings about a corpus (``RunWarning``), one line each, in yellow."""
    for warning in warnings:
        where = []
        count = getattr(warning, "count", None)
        if count:
            where.append("once" if count == 1 else f"{count:,} times")
        if getattr(warning, "first_line", None):
            where.append(f"first at line {warning.first_line:,}")
        suffix = f" ({', '.join(where)})" if where else ""
        out.print(f"warning [{warning.code}]: {warning.message}{suffix}", style="yellow", markup=False)


def _summary(out: Console, corpus: CorpusPublic) -> None:
    out.print(
        f"corpus {corpus.id} ({corpus.name}): {corpus.documents:,} documents, "
        f"{corpus.sentences:,} sentences, {corpus.bytes:,} bytes",
        markup=False,
    )
    print_warnings(out, corpus.warnings)


@click.group("corpora", cls=ClientGroup)
def corpora() -> None:
    """Training corpora on the server: one sentence per line, a blank line between documents."""


@corpora.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Display name (default: the file name without extension).")
@json_option
@click.pass_context
def upload_command(ctx: click.Context, file: Path, name: str | None, as_json: bool) -> None:
    """Upload FILE (.txt or .txt.gz): validated while it streams in, its statistics and warnings shown. The
    same content uploaded again gives back the existing corpus."""
    corpus = upload_corpus(client_from(ctx), file, name)
    if as_json:
        print_json(corpus)
        return
    _summary(console(), corpus)


@corpora.command("list")
@json_option
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every corpus, newest first."""
    found = client_from(ctx).corpora.list()
    if as_json:
        print_json({"data": found})
        return
    table = WholeWordTable("id", "name", "documents", "sentences", "bytes", "warnings", "created")
    for corpus in found:
        table.add_row(
            corpus.id,
            corpus.name,
            fmt(corpus.documents),
            fmt(corpus.sentences),
            fmt(corpus.bytes),
            fmt(len(corpus.warnings)),
            f"{corpus.created_at:%Y-%m-%d %H:%M}",
        )
    console().print(table)


@corpora.command("show")
@click.argument("corpus_id")
@json_option
@click.pass_context
def show_command(ctx: click.Context, corpus_id: str, as_json: bool) -> None:
    """A corpus: its statistics and warnings."""
    corpus = client_from(ctx).corpora.get(corpus_id)
    if as_json:
        print_json(corpus)
        return
    out = console()
    _summary(out, corpus)
    shape = corpus.stats.sentences_per_document
    out.print(
        f"file {corpus.filename}, sha256 {corpus.sha256}, {corpus.stats.characters:,} characters; sentences "
        f"per document: min {shape.min}, median {fmt(shape.median)}, mean {fmt(shape.mean)}, "
        f"p90 {shape.p90}, max {shape.max}",
        markup=False,
    )


@corpora.command("analyze")
@click.argument("corpus_id")
@click.option("--base", "base_model", required=True, help="The base model whose tokenizer is used.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run-config JSON with hyperparameters (or a run body with `hyperparameters`).",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for a queued analysis.")
@json_option
@schema_options(Hyperparameters)
@click.pass_context
def analyze_command(
    ctx: click.Context,
    corpus_id: str,
    base_model: str,
    config_path: Path | None,
    wait: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Analyse a corpus as a run with these settings would prepare it, without training: [UNK] words,
    wordpieces per word, instances, truncated pairs, steps. A worker does it (once per tokenizer and
    preparation settings); --wait polls until it is done."""
    _, hyperparameters = read_run_config(config_path)
    hyperparameters |= schema_overrides(Hyperparameters, options)
    client = client_from(ctx)
    analysis = client.corpora.analyze(corpus_id, base_model=base_model, hyperparameters=hyperparameters)
    if wait and analysis.status not in ("succeeded", "failed"):
        with Console(stderr=True).status(f"analysis {analysis.id}: {analysis.status}") as status:
            while analysis.status not in ("succeeded", "failed"):
                time.sleep(_ANALYSIS_POLL_SECONDS)
                analysis = client.corpora.get_analysis(corpus_id, analysis.id)
                status.update(f"analysis {analysis.id}: {analysis.status}")
    if as_json:
        print_json(analysis)
        return
    _print_analysis(console(), analysis)


def _print_analysis(out: Console, analysis: AnalysisPublic) -> None:
    out.print(f"analysis {analysis.id} of {analysis.corpus_id} with {analysis.base_model}: {analysis.status}")
    if analysis.error is not None:
        out.print(f"error ({analysis.error.type}): {analysis.error.message}", style="red", markup=False)
    figures = analysis.analysis
    if figures is None:
        return
    table = WholeWordTable("figure", "value", title="corpus analysis", title_justify="left")
    tokenization = figures.tokenization.model_dump()
    for name, value in tokenization.items():
        if not isinstance(value, (dict, list)):
            table.add_row(f"tokenization.{name}", fmt(value))
    for split_name, split in (("train", figures.train), ("eval", figures.eval)):
        if split is None:
            continue
        for name, value in split.model_dump().items():
            table.add_row(f"{split_name}.{name}", fmt(value))
    if figures.steps is not None:
        for name, value in figures.steps.model_dump().items():
            table.add_row(f"steps.{name}", fmt(value))
    out.print(table)
    print_warnings(out, figures.warnings)


@corpora.command("delete")
@click.argument("corpus_id")
@click.pass_context
def delete_command(ctx: click.Context, corpus_id: str) -> None:
    """Delete a corpus and its file (refused while a run that is not finished uses it)."""
    client_from(ctx).corpora.delete(corpus_id)
    click.echo(f"deleted corpus {corpus_id}")
