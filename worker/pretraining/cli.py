"""Local commands of the training library: ``bertpt prepare`` (and ``bertpt train``, registered from
:mod:`worker.pretraining.train_cli`). They need no server."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from worker.pretraining.builtin_models import builtin_model_dir
from worker.pretraining.cli_options import schema_options, schema_overrides
from worker.pretraining.corpus import CorpusFormatError
from worker.pretraining.hyperparameters import HyperparameterError, PreparationConfig, load_hyperparameters
from worker.pretraining.model_files import (
    HUB_PREFIX,
    BaseModelError,
    max_position_embeddings,
    read_config,
    sequence_length_error,
)

__all__ = ["fail", "prepare_command"]


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear line on stderr and a non-zero exit: what a script calling the CLI can act on."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def preparation_report(prepared: Any, seconds: float) -> dict[str, Any]:
    """The one JSON object ``bertpt prepare`` prints."""
    manifest = prepared.manifest
    return {
        "cache_key": prepared.key,
        "path": str(prepared.path),
        "cached": prepared.cached,
        "seconds": round(seconds, 3),
        # Everything the corpus checks and the preparation found, each with its source.
        "warnings": manifest.get("warnings", []),
        "corpus": manifest["corpus"],
        "eval_corpus": manifest.get("eval_corpus"),
        "wordpieces_per_word": manifest["corpus"]["wordpieces_per_word"],
        # The training split's figures at the top level; the held-out split's under "eval".
        **manifest["splits"]["train"],
        "eval": manifest["splits"].get("eval"),
        "config": manifest["config"],
    }


def tokenizer_source(tokenizer: str) -> str:
    """What ``--tokenizer`` names, as the loader takes it: an existing path as given, a built-in model's
    directory for its name (as ``bertpt train --base`` takes it), else a hub id (``hf:`` prefix dropped).
    BaseModelError when a built-in is not installed."""
    if Path(tokenizer).expanduser().exists():
        return tokenizer
    directory = builtin_model_dir(tokenizer)
    return str(directory) if directory is not None else tokenizer.removeprefix(HUB_PREFIX)


def _sequence_length_error(tokenizer_path: str, max_seq_length: int) -> str | None:
    """When the tokenizer is a checkpoint's directory: whether max_seq_length fits its model."""
    directory = Path(tokenizer_path)
    if not (directory / "config.json").is_file():
        return None  # a tokenizer alone (or a hub id): the model is not known here
    try:
        positions = max_position_embeddings(read_config(directory))
    except BaseModelError:
        return None  # not a BERT config: the preparation only needs the tokenizer
    return sequence_length_error(max_seq_length, positions, f"the model in {directory}")


@click.command("prepare")
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--tokenizer",
    "tokenizer_path",
    required=True,
    help="Directory of the checkpoint's fast tokenizer (tokenizer.json), a built-in model's name, or a hub "
    "id.",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache directory; the prepared data goes to OUT/<cache key>.",
)
@click.option(
    "--eval-corpus",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A separate corpus to evaluate on (then no documents are held out of CORPUS).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Run-config JSON; its preparation hyperparameters are used (options below override it).",
)
@click.option("--max-line-chars", type=int, default=100_000, show_default=True, help="Longest line accepted.")
@schema_options(PreparationConfig)
def prepare_command(
    corpus: Path,
    tokenizer_path: str,
    out: Path,
    eval_corpus: Path | None,
    config_path: Path | None,
    max_line_chars: int,
    **options: Any,
) -> None:
    """Validate CORPUS (one sentence per line, a blank line between documents; .txt or .txt.gz) and
    build NSP/MLM training instances; prints one JSON object of statistics."""
    from worker.pretraining.prepare import PreparationError, prepare_corpus

    started = time.perf_counter()
    try:
        hyperparameters = load_hyperparameters(config_path, schema_overrides(PreparationConfig, options))
        tokenizer_path = tokenizer_source(tokenizer_path)
    except (HyperparameterError, BaseModelError) as exc:
        fail(str(exc), 2)
    too_long = _sequence_length_error(tokenizer_path, hyperparameters.max_seq_length)
    if too_long is not None:
        fail(f"max_seq_length: {too_long}", 2)
    try:
        prepared = prepare_corpus(
            corpus,
            tokenizer_path,
            out,
            hyperparameters.preparation(),
            eval_corpus=eval_corpus,
            max_line_chars=max_line_chars,
        )
    except HyperparameterError as exc:  # settings the eval corpus would make ignored
        fail(str(exc), 2)
    except CorpusFormatError as exc:
        fail(str(exc))
    except (PreparationError, BaseModelError, OSError) as exc:
        fail(str(exc))
    # Warnings also as lines on stderr, for a person; stdout stays one JSON object for scripts.
    for warning in prepared.warnings:
        where = ", ".join(
            part
            for part in (warning.source, f"line {warning.first_line}" if warning.first_line else None)
            if part
        )
        click.echo(f"warning: {warning.code}{f' ({where})' if where else ''}: {warning.message}", err=True)
    click.echo(json.dumps(preparation_report(prepared, time.perf_counter() - started), indent=2))
