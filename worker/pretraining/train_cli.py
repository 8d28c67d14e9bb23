"""``bertpt train``: run a whole continual pre-training job locally, with a progress bar and a summary.

Besides its fixed options, the command takes one ``--option`` per :class:`Hyperparameters` field,
generated from the pydantic schema (see :mod:`worker.pretraining.cli_options`), so the CLI can never
drift from the contract. Precedence: field defaults < ``--config run.json`` < explicit options.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from worker.pretraining import records
from worker.pretraining.builtin_models import BUILTIN_MODELS
from worker.pretraining.cli_options import schema_options, schema_overrides
from worker.pretraining.hyperparameters import HyperparameterError, Hyperparameters, load_hyperparameters
from worker.pretraining.records import TrainingRecord, TrainingResult

__all__ = ["summary_table", "train_command"]

# Exit codes: 2 for what was given wrong (invalid hyperparameters, like click's usage errors, or a base
# checkpoint that cannot be used), 1 for a run that cannot be carried out (bad corpus, resume mismatch,
# a training that diverged, ...).
EXIT_CONFIG = 2
EXIT_FAILED = 1


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.4e}"
    return str(value)


def summary_table(result: TrainingResult) -> Table:
    """Baseline vs final evaluation metrics, per split."""
    table = Table(title=f"bertpt train: {result.status} after {result.steps}/{result.max_steps} steps")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("baseline (step 0)", justify="right")
    table.add_column("final", justify="right")
    table.add_column("change", justify="right")
    splits = sorted(set(result.baseline_metrics) | set(result.final_metrics))
    for split in splits:
        baseline = result.baseline_metrics[split].values() if split in result.baseline_metrics else {}
        final = result.final_metrics[split].values() if split in result.final_metrics else {}
        for metric in sorted(set(baseline) | set(final)):
            before, after = baseline.get(metric), final.get(metric)
            change = after - before if isinstance(before, float) and isinstance(after, float) else None
            table.add_row(
                split, metric, _fmt(before), _fmt(after), _fmt(change) if change is None else f"{change:+.4g}"
            )
    return table


class _Display:
    """Progress bar fed by the run's records."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message, style="dim", markup=False, highlight=False)

    def on_record(self, record: TrainingRecord) -> None:
        if isinstance(record, records.Progress):
            if self.task is None:
                self.task = self.progress.add_task(
                    "train", total=record.max_steps, completed=record.step, loss="-", speed="-"
                )
            self.progress.update(self.task, completed=record.step, total=record.max_steps)
        elif isinstance(record, records.LogLine):
            self.log(record.message)
        elif isinstance(record, records.CheckpointSaved):
            self.log(f"checkpoint written: {record.path}")
        elif isinstance(record, records.StepSkipped):
            self.console.print(
                f"warning: {record.summary()}; {record.skipped_steps} skipped so far",
                style="yellow",
                markup=False,
                highlight=False,
            )
        elif isinstance(record, records.MetricsRecord):
            metrics = record.metrics
            if isinstance(metrics, records.TrainMetrics):
                if self.task is not None:
                    self.progress.update(
                        self.task, loss=f"{metrics.loss:.4f}", speed=f"{metrics.tokens_per_second:,.0f}"
                    )
                return
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.values().items())
            self.console.print(f"{record.split} @ step {record.step}: {shown}", markup=False, highlight=False)


def _stop_on_interrupt() -> tuple[Any, Any]:
    """First Ctrl-C: ask the run to stop at the end of the step (with a checkpoint); second: abort."""
    requested = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        print("\nstopping after this step (checkpoint follows); Ctrl-C again to abort", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    return (lambda: requested["stop"]), previous


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("train")
@click.option(
    "--base",
    required=True,
    help="Base checkpoint: a local Hugging Face directory, a built-in model "
    f"({', '.join(BUILTIN_MODELS)}), or a Hugging Face hub id (owner/name).",
)
@click.option(
    "--corpus",
    required=True,
    type=_FILE,
    help="Training corpus in BERT format (one sentence per line, blank line between documents).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory: model/, checkpoints/, tensorboard/.",
)
@click.option(
    "--eval-corpus", type=_FILE, help="Held-out domain text (default: eval_fraction of the corpus)."
)
@click.option(
    "--reference-corpus", type=_FILE, help="General-domain text evaluated alongside, to watch forgetting."
)
@click.option(
    "--replay-corpus",
    type=_FILE,
    help="General-domain text replayed against forgetting: --replay-ratio of every epoch's training "
    "instances come from it (needs --replay-ratio above 0). May be the reference corpus: its held-out part "
    "is then evaluated and the rest replayed.",
)
@click.option("--config", "config_path", type=_FILE, help="Run-config JSON with hyperparameters.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Prepared-data cache (default: <out>/../.bertpt-cache).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue an interrupted run found in --out.",
)
@schema_options(Hyperparameters)
def train_command(
    base: str,
    corpus: Path,
    out: Path,
    eval_corpus: Path | None,
    reference_corpus: Path | None,
    replay_corpus: Path | None,
    config_path: Path | None,
    cache_dir: Path | None,
    resume: bool,
    **options: Any,
) -> None:
    """Continue pre-training a BERT checkpoint (masked LM + next-sentence prediction) on a corpus."""
    from worker.pretraining.corpus import CorpusFormatError
    from worker.pretraining.engine import run_pretraining
    from worker.pretraining.model_files import BaseModelError
    from worker.pretraining.prepare import PreparationError
    from worker.pretraining.run_checkpoints import ResumeError
    from worker.pretraining.trainer import TrainingError

    console = Console(soft_wrap=True)
    try:
        h = load_hyperparameters(config_path, schema_overrides(Hyperparameters, options))
    except HyperparameterError as exc:
        click.echo(f"error: invalid hyperparameters: {exc}", err=True)
        sys.exit(EXIT_CONFIG)

    should_stop, previous_handler = _stop_on_interrupt()
    try:
        with _Display(console) as display:
            result = run_pretraining(
                base,
                corpus,
                out,
                h,
                eval_corpus=eval_corpus,
                reference_corpus=reference_corpus,
                replay_corpus=replay_corpus,
                cache_dir=cache_dir,
                sink=display.on_record,
                should_stop=should_stop,
                resume=resume,
            )
    except (BaseModelError, HyperparameterError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except (ResumeError, TrainingError, PreparationError, CorpusFormatError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    console.print(summary_table(result))
    if result.replay is not None:
        replay = result.replay
        console.print(
            f"replayed {replay.instances_per_epoch} of every epoch's "
            f"{replay.instances_per_epoch + replay.domain_instances_per_epoch} instances "
            f"(replay_ratio {replay.ratio}) from {replay.instances} prepared from the replay corpus"
            + (" (its held-out part: the reference split)" if replay.held_out_for_reference else "")
        )
    for warning in result.warnings:
        console.print(f"warning: {warning.message}", style="yellow", markup=False, highlight=False)
    if result.stopped_early is not None:
        console.print(f"stopped early: {result.stopped_early.reason}", markup=False, highlight=False)
    if result.model_path is not None:
        selected = result.selected_checkpoint
        why = f" (step {selected.step}: {selected.reason})" if selected is not None else ""
        console.print(f"model: {result.model_path}{why}", markup=False, highlight=False)
    if result.checkpoint_path is not None and result.status != "completed":
        console.print(f"resumable from: {result.checkpoint_path} (run the same command again)")
