"""Tables of runs for the terminal: the baseline-vs-final evaluation of a run (:func:`baseline_final_table`,
also printed by ``runs follow`` and the demo), runs side by side (:func:`comparison_tables`), a run's metric
series (:func:`series_table`) and kept checkpoints (:func:`checkpoints_table`).

Which way is better is known per metric (:data:`LOWER_IS_BETTER`, :data:`HIGHER_IS_BETTER`): a change is
flagged ``better`` in green or ``worse`` in red, whether it is signal or noise; the caption says what to
expect from a run as short as the one shown, so that a tiny run's noisy NSP accuracy is read for what it is.
Metric names and ids are never cut, however narrow the console (:class:`~bertpt.cli.context.WholeWordTable`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from rich.table import Table
from rich.text import Text

from app.runs.schemas import MetricsPublic, RunCheckpointPublic, RunEventPublic, RunPublic
from bertpt.cli.context import WholeWordTable, fmt

__all__ = [
    "EVAL_METRICS",
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "SHORT_RUN_STEPS",
    "SPLITS",
    "Verdict",
    "baseline_final_table",
    "checkpoints_table",
    "comparison_tables",
    "differing_settings",
    "eval_instances",
    "final_metrics",
    "series_table",
    "verdict",
]

# The metrics of an evaluation (worker.pretraining.records.EvalMetrics), in the order shown.
EVAL_METRICS = (
    "masked_lm_loss",
    "perplexity",
    "masked_lm_accuracy",
    "next_sentence_loss",
    "next_sentence_accuracy",
)
LOWER_IS_BETTER = frozenset({"loss", "masked_lm_loss", "perplexity", "next_sentence_loss"})
HIGHER_IS_BETTER = frozenset({"masked_lm_accuracy", "next_sentence_accuracy"})
# The evaluated splits: held-out domain text, and the general-domain reference corpus (forgetting).
SPLITS = {"eval": "eval (domain, held out)", "reference": "reference (general text)"}
# The event that tells the evaluated instances (app.runs.events.RunEventType.TRAINING_STARTED; that module
# is the database's side, not imported by the client).
_TRAINING_STARTED = "training_started"
# Below this many optimizer steps a run is "short": little beyond a lower masked-LM loss is expected.
SHORT_RUN_STEPS = 1000

Verdict = Literal["better", "worse", "same"]
_VERDICT_STYLE = {"better": "green", "worse": "bold red", "same": "dim"}


def verdict(metric: str, before: Any, after: Any) -> Verdict | None:
    """Whether ``after`` is better, worse or the same as ``before`` for ``metric`` (None: a value is
    missing, or the metric has no known direction)."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    if metric in LOWER_IS_BETTER:
        sign = -1
    elif metric in HIGHER_IS_BETTER:
        sign = 1
    else:
        return None
    change = (after - before) * sign
    if change > 0:
        return "better"
    if change < 0:
        return "worse"
    return "same"


def final_metrics(run: RunPublic) -> dict[str, dict[str, Any]]:
    """The run's last evaluation of each split (its ``latest``; ``step`` included): the final one once
    the run ended."""
    latest = run.latest.model_dump()
    return {split: latest[split] for split in SPLITS if isinstance(latest.get(split), dict)}


def _steps(run: RunPublic) -> int | None:
    total = run.progress.total_steps or run.hyperparameters.get("max_steps")
    return int(total) if isinstance(total, (int, float)) else None


def _change(before: Any, after: Any) -> str:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        return f"{after - before:+.4g}" if after != before else "0"
    return "-"


def _step_of(metrics: Mapping[str, Any]) -> str:
    step = metrics.get("step")
    return f" (step {step})" if isinstance(step, int) else ""


def eval_instances(events: Iterable[RunEventPublic]) -> dict[str, int] | None:
    """The instances (sentence pairs) of each evaluated split, as the run's latest ``training_started``
    event tells them (``{"eval": 3, "reference": 40}``); None before training started."""
    found: dict[str, int] | None = None
    for event in events:
        splits = event.data.get("eval_splits") if event.type == _TRAINING_STARTED else None
        if isinstance(splits, dict):
            found = {str(split): count for split, count in splits.items() if isinstance(count, int)}
    return found


def baseline_final_table(run: RunPublic, *, instances: Mapping[str, int] | None = None) -> Table:
    """Baseline (step 0) vs final evaluation metrics of ``run``, per split (the held-out domain text and
    the reference corpus), each change marked better/worse by the metric's direction, with a caption
    saying what the changes mean for a run this short and whether the reference text got worse.
    ``instances``: the evaluated sentence pairs per split (:func:`eval_instances`), for the caption to say
    how much one pair moves the next-sentence accuracy; unknown when None."""
    final = final_metrics(run)
    steps = _steps(run)
    done = run.progress.step
    title = f"{run.name}: baseline vs final ({run.status}"
    title += f", {done}/{steps} steps)" if done is not None and steps else ")"
    # Text, not markup: the run's name is the user's (the table may go to any console: the demo's).
    table = WholeWordTable(title=Text(title), caption_justify="left", title_justify="left")
    table.add_column("split")
    table.add_column("metric")
    table.add_column("baseline (step 0)", justify="right")
    table.add_column("final", justify="right")
    table.add_column("change", justify="right")
    table.add_column("", justify="left")

    worse: list[tuple[str, str]] = []
    for split, label in SPLITS.items():
        before_all: Mapping[str, Any] = run.baseline.get(split) or {}
        after_all: Mapping[str, Any] = final.get(split) or {}
        if not before_all and not after_all:
            continue
        for metric in EVAL_METRICS:
            before, after = before_all.get(metric), after_all.get(metric)
            if before is None and after is None:
                continue
            judged = verdict(metric, before, after)
            if judged == "worse":
                worse.append((split, metric))
            table.add_row(
                label + _step_of(after_all) if metric == EVAL_METRICS[0] else "",
                metric,
                fmt(before),
                fmt(after),
                _change(before, after),
                Text(judged or "", style=_VERDICT_STYLE.get(judged or "", "")),
            )
    caption = _caption(run, steps, worse, has_rows=table.row_count > 0, instances=instances or {})
    if caption:
        table.caption = Text("\n".join(caption))
    return table


def _caption(
    run: RunPublic,
    steps: int | None,
    worse: list[tuple[str, str]],
    *,
    has_rows: bool,
    instances: Mapping[str, int],
) -> list[str]:
    """What the table means: the directions, what a short run can show, forgetting, the selected step."""
    if not has_rows:
        if run.status.is_terminal:
            return [f"The run ended ({run.status}) before any evaluation: there is no metric to show."]
        return ["No evaluation yet: the baseline (step 0) is evaluated before the first training step."]
    lines = ["loss and perplexity: lower is better; accuracy: higher is better."]
    if worse:
        flagged = ", ".join(f"{split} {metric}" for split, metric in worse)
        lines.append(f"worse: {flagged}.")
    if steps is not None and steps < SHORT_RUN_STEPS:
        documents = run.hyperparameters.get("eval_documents")
        held_out = f" ({documents} held-out documents)" if isinstance(documents, int) else ""
        pairs = instances.get("eval")
        if pairs:
            nsp = (
                f"the next-sentence accuracy is over {pairs} sentence pair{'s' if pairs != 1 else ''}, so "
                f"each pair judged otherwise moves it by {fmt(100 / pairs)} points"
            )
        else:
            nsp = "the next-sentence accuracy over so few pairs shifts by several points either way"
        lines.append(
            f"A short run ({steps} steps): expect the masked-LM loss and perplexity on the domain text to "
            "fall, little else. The next-sentence loss and the accuracies are measured on a small "
            f"evaluation set{held_out}, so they move by noise: {nsp} from one evaluation to the next, and "
            "a 'worse' there is not by itself a regression."
        )
    if ("reference", "masked_lm_loss") in worse:
        lines.append(
            "The general-text (reference) masked-LM loss rose: some forgetting. replay_ratio, a lower "
            "learning_rate or max_reference_loss_increase limit it."
        )
    selected = run.selected_checkpoint
    last = (final_metrics(run).get("eval") or {}).get("step")
    if selected is not None and last is not None and selected.step != last:
        lines.append(
            f"The run's model holds step {selected.step}'s weights ({selected.reason}); 'final' is the last "
            f"evaluation (step {last})."
        )
    return lines


def comparison_tables(runs: Sequence[RunPublic]) -> tuple[Table, Table | None]:
    """Runs side by side: each metric's baseline -> final per run (each change marked better or worse), and
    the settings that differ between them (base model, corpora, hyperparameters); None when none does."""
    metrics = WholeWordTable(title="baseline -> final (change)", title_justify="left")
    metrics.add_column("split")
    metrics.add_column("metric")
    for run in runs:
        metrics.add_column(Text(f"{run.name}\n{run.id}\n{run.status}"), justify="right")
    finals = [final_metrics(run) for run in runs]
    for split, label in SPLITS.items():
        first = True
        for metric in EVAL_METRICS:
            cells: list[Text] = []
            for run, final in zip(runs, finals, strict=True):
                before = (run.baseline.get(split) or {}).get(metric)
                after = (final.get(split) or {}).get(metric)
                judged = verdict(metric, before, after)
                if before is None and after is None:
                    cells.append(Text("-"))
                    continue
                text = f"{fmt(before)} -> {fmt(after)} ({_change(before, after)})"
                if judged in ("better", "worse"):
                    text += f" {judged}"
                cells.append(Text(text, style=_VERDICT_STYLE.get(judged or "", "")))
            if all(cell.plain == "-" for cell in cells):
                continue
            metrics.add_row(label if first else "", metric, *cells)
            first = False

    settings = differing_settings(runs)
    if not settings:
        return metrics, None
    table = WholeWordTable(title="settings that differ", title_justify="left")
    table.add_column("setting")
    for run in runs:
        table.add_column(Text(f"{run.name}\n{run.id}"), justify="right")
    for name, values in settings.items():
        table.add_row(name, *(fmt(value) for value in values))
    return metrics, table


def _settings(run: RunPublic) -> dict[str, Any]:
    return {
        "base_model": run.base_model,
        "corpus_id": run.corpus_id,
        "eval_corpus_id": run.eval_corpus_id,
        "reference_corpus_id": run.reference_corpus_id,
        "replay_corpus_id": run.replay_corpus_id,
        **run.hyperparameters,
    }


def differing_settings(runs: Sequence[RunPublic]) -> dict[str, list[Any]]:
    """Each setting (base model, corpora, hyperparameter) whose value is not the same in every run, with
    the runs' values in order."""
    every = [_settings(run) for run in runs]
    differing: dict[str, list[Any]] = {}
    for name in dict.fromkeys(name for settings in every for name in settings):
        values = [settings.get(name) for settings in every]
        if len({json.dumps(value, sort_keys=True, default=str) for value in values}) > 1:
            differing[name] = values
    return differing


def series_table(metrics: MetricsPublic) -> Table:
    """A run's metric series (``GET /v1/runs/{id}/metrics``), one row each: points, first and last value
    with their step, min and max."""
    table = WholeWordTable("split", "metric", "points", "first", "last", "min", "max")
    for series in metrics.series:
        values = [value for _, value in series.points if value is not None]
        first = series.points[0] if series.points else None
        last = series.points[-1] if series.points else None
        table.add_row(
            series.split,
            series.name,
            fmt(len(series.points)),
            f"{fmt(first[1])} @ {first[0]}" if first else "-",
            f"{fmt(last[1])} @ {last[0]}" if last else "-",
            fmt(min(values)) if values else "-",
            fmt(max(values)) if values else "-",
        )
    return table


# What the checkpoints table shows of each split's latest metrics when the checkpoint was saved.
_CHECKPOINT_METRICS = {
    "train": ("loss",),
    "eval": ("masked_lm_loss", "perplexity", "masked_lm_accuracy", "next_sentence_accuracy"),
    "reference": ("masked_lm_loss", "perplexity"),
}


def checkpoints_table(checkpoints: Sequence[RunCheckpointPublic]) -> Table:
    """A run's kept checkpoints: step, size, when, and the latest metrics of each split when it was saved
    (the training loss, the held-out and reference evaluations), one line per split."""
    table = WholeWordTable("step", "bytes", "created")
    table.add_column("metrics at the checkpoint", overflow="fold")  # wrapped at spaces, never cut
    for checkpoint in checkpoints:
        lines = []
        for split, names in _CHECKPOINT_METRICS.items():
            values = checkpoint.metrics.get(split)
            if not isinstance(values, Mapping):
                continue
            shown = [f"{name} {fmt(values[name])}" for name in names if values.get(name) is not None]
            if shown:
                lines.append(f"{split}: {', '.join(shown)}")
        table.add_row(
            str(checkpoint.step),
            fmt(checkpoint.size_bytes),
            f"{checkpoint.created_at:%Y-%m-%d %H:%M}",
            "\n".join(lines) or "-",
        )
    return table
