"""The baseline-vs-final table: changes judged by each metric's direction, the worse ones flagged in red,
and a caption saying what a short run can show."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.runs.schemas import (
    MetricSeries,
    MetricsPublic,
    RunCheckpointPublic,
    RunEventPublic,
    RunLatest,
    RunProgress,
    RunPublic,
)
from bertpt.cli.render import (
    baseline_final_table,
    checkpoints_table,
    comparison_tables,
    eval_instances,
    series_table,
    verdict,
)


def make_run(
    *,
    baseline: dict[str, Any],
    latest: dict[str, Any],
    steps: int = 30,
    hyperparameters: dict[str, Any] | None = None,
    run_id: str = "run_a",
    status: str = "succeeded",
) -> RunPublic:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return RunPublic(
        id=run_id,
        name="demo",
        status=status,
        base_model="minilm-l6-h384-uncased",
        corpus_id="corp_x",
        eval_corpus_id=None,
        reference_corpus_id="corp_ref",
        replay_corpus_id=None,
        hyperparameters={"max_steps": steps, "eval_documents": 20, **(hyperparameters or {})},
        created_at=now,
        started_at=now,
        finished_at=now,
        progress=RunProgress(step=steps, total_steps=steps),
        latest=RunLatest.model_validate(latest),
        baseline=baseline,
        warnings=[],
        error=None,
        metadata={},
        attempt=1,
        cancel_requested=False,
    )


BASELINE = {
    "eval": {"step": 0, "masked_lm_loss": 7.0, "perplexity": 1096.6, "next_sentence_accuracy": 0.53},
    "reference": {"step": 0, "masked_lm_loss": 3.0, "perplexity": 20.1, "next_sentence_accuracy": 0.9},
}
EVERY_METRIC = {
    "masked_lm_loss": 7.0,
    "perplexity": 1096.6,
    "masked_lm_accuracy": 0.12,
    "next_sentence_loss": 0.69,
    "next_sentence_accuracy": 0.53,
}
# A run id as the API makes them (app.ids.new_id): the width the tables must keep whole.
LONG_ID = "run_" + "Abc-_9" * 4
FINAL = {
    "eval": {"step": 30, "masked_lm_loss": 6.0, "perplexity": 403.4, "next_sentence_accuracy": 0.46},
    "reference": {"step": 30, "masked_lm_loss": 3.2, "perplexity": 24.5, "next_sentence_accuracy": 0.9},
}


def rows(table: Table) -> list[list[str | Text]]:
    cells = [list(column.cells) for column in table.columns]
    return [list(row) for row in zip(*cells, strict=True)]


def rendered(table: Table, width: int = 200) -> str:
    console = Console(record=True, width=width, color_system=None, soft_wrap=True)
    console.print(table)
    return console.export_text()


def assert_whole(text: str, *words: str) -> None:
    """Each word on one line of ``text``, nothing cut short with an ellipsis."""
    assert "…" not in text, text
    for word in words:
        assert any(word in line for line in text.splitlines()), (word, text)


def test_verdict_knows_the_direction_of_each_metric() -> None:
    assert verdict("masked_lm_loss", 7.0, 6.0) == "better"
    assert verdict("perplexity", 20.0, 25.0) == "worse"
    assert verdict("next_sentence_accuracy", 0.53, 0.46) == "worse"
    assert verdict("masked_lm_accuracy", 0.1, 0.2) == "better"
    assert verdict("masked_lm_loss", 7.0, 7.0) == "same"
    assert verdict("masked_lm_loss", None, 7.0) is None
    assert verdict("step", 0, 30) is None  # no direction


def test_a_worse_metric_is_flagged_in_red_and_a_better_one_is_not() -> None:
    table = baseline_final_table(make_run(baseline=BASELINE, latest=FINAL))
    by_metric = {(row[0] or previous, row[1]): row for previous, row in _with_split(rows(table))}
    nsp = by_metric[("eval", "next_sentence_accuracy")]
    assert (nsp[2], nsp[3], nsp[4]) == ("0.53", "0.46", "-0.07")
    assert isinstance(nsp[5], Text) and nsp[5].plain == "worse" and "red" in str(nsp[5].style)
    loss = by_metric[("eval", "masked_lm_loss")]
    assert isinstance(loss[5], Text) and loss[5].plain == "better" and "red" not in str(loss[5].style)
    forgetting = by_metric[("reference", "masked_lm_loss")]
    assert isinstance(forgetting[5], Text) and forgetting[5].plain == "worse"
    assert by_metric[("reference", "next_sentence_accuracy")][5].plain == "same"

    text = rendered(table)
    assert "worse: eval next_sentence_accuracy, reference masked_lm_loss, reference perplexity." in text
    assert "A short run (30 steps)" in text and "move by noise" in text and "(20 held-out documents)" in text
    assert "some forgetting" in text  # the reference loss rose


def _with_split(table_rows: list[list[Any]]) -> list[tuple[str, list[Any]]]:
    """Each row with the split it belongs to (only a split's first row names it)."""
    out, split = [], ""
    for row in table_rows:
        if row[0]:
            split = str(row[0]).split(" ")[0]
            row = [split, *row[1:]]
        out.append((split, row))
    return out


def test_a_long_run_gets_no_short_run_caption_and_no_forgetting_note_without_it() -> None:
    final = {**FINAL, "reference": {**BASELINE["reference"], "step": 5000, "masked_lm_loss": 2.9}}
    text = rendered(baseline_final_table(make_run(baseline=BASELINE, latest=final, steps=5000)))
    assert "A short run" not in text and "forgetting" not in text
    assert "worse: eval next_sentence_accuracy." in text


def test_a_run_without_evaluations_says_so() -> None:
    text = rendered(baseline_final_table(make_run(baseline={}, latest={}, status="running")))
    assert "No evaluation yet" in text


def test_a_run_that_ended_before_any_evaluation_does_not_promise_one() -> None:
    text = rendered(baseline_final_table(make_run(baseline={}, latest={}, status="cancelled")))
    assert "The run ended (cancelled) before any evaluation" in text
    assert "No evaluation yet" not in text and "is evaluated before" not in text


def test_the_short_run_note_tells_the_real_number_of_pairs_or_none() -> None:
    started = RunEventPublic(
        id=7,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        level="info",
        type="training_started",
        message="training 30 steps",
        data={"max_steps": 30, "eval_splits": {"eval": 3, "reference": 12}},
    )
    instances = eval_instances([started])
    assert instances == {"eval": 3, "reference": 12}
    run = make_run(baseline=BASELINE, latest=FINAL)
    told = " ".join(rendered(baseline_final_table(run, instances=instances)).split())
    assert "over 3 sentence pairs, so each pair judged otherwise moves it by 33.33 points" in told
    unknown = " ".join(rendered(baseline_final_table(run)).split())
    assert "a few dozen" not in unknown and "over so few pairs" in unknown
    assert eval_instances([]) is None


def test_at_80_columns_ids_and_metric_names_are_never_cut() -> None:
    """rich assumes 80 columns when the output is piped: the other columns wrap instead."""
    every = {"eval": {"step": 0, **EVERY_METRIC}, "reference": {"step": 0, **EVERY_METRIC}}
    run = make_run(baseline=every, latest=every, run_id=LONG_ID)
    text = rendered(baseline_final_table(run), width=80)
    assert_whole(text, "masked_lm_accuracy", "next_sentence_loss", "next_sentence_accuracy")

    other = make_run(baseline=every, latest=every, run_id=LONG_ID.replace("run_", "run_x"))
    metrics, _ = comparison_tables([run, other, other.model_copy(update={"id": "run_" + "z" * 24})])
    assert_whole(rendered(metrics, width=80), LONG_ID, other.id, "masked_lm_accuracy", "next_sentence_loss")

    series = MetricsPublic(
        series=[
            MetricSeries(split=split, name=name, points=[(0, 0.5), (30, 0.25)])
            for split in ("eval", "reference")
            for name in EVERY_METRIC
        ],
    )
    assert_whole(rendered(series_table(series), width=80), "masked_lm_accuracy", "next_sentence_loss")


def test_the_checkpoints_table_shows_each_splits_metrics_at_the_checkpoint() -> None:
    checkpoint = RunCheckpointPublic(
        step=20,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        metrics={
            "train": {"loss": 6.25, "learning_rate": 5e-05},
            "eval": {"masked_lm_loss": 6.05, "perplexity": 424.1, "masked_lm_accuracy": 0.125},
            "reference": {"masked_lm_loss": 3.1, "perplexity": 22.2},
        },
        size_bytes=123_456,
        sha256="0" * 64,
    )
    ((step, size, _, shown),) = rows(checkpoints_table([checkpoint]))
    assert (step, size) == ("20", "123,456")
    assert str(shown).splitlines() == [
        "train: loss 6.25",
        "eval: masked_lm_loss 6.05, perplexity 424.1, masked_lm_accuracy 0.125",
        "reference: masked_lm_loss 3.1, perplexity 22.2",
    ]


def test_comparison_shows_each_run_and_the_settings_that_differ() -> None:
    first = make_run(baseline=BASELINE, latest=FINAL, run_id="run_a")
    second = make_run(
        baseline=BASELINE, latest=FINAL, run_id="run_b", hyperparameters={"learning_rate": 1e-4}
    )
    metrics, settings = comparison_tables([first, second])
    assert settings is not None
    text = rendered(metrics) + rendered(settings)
    assert "run_a" in text and "run_b" in text and "7 -> 6 (-1) better" in text
    assert "0.53 -> 0.46 (-0.07) worse" in text
    assert [row[0] for row in rows(settings)] == ["learning_rate"]
    _, same = comparison_tables([first, first])
    assert same is None


def test_a_name_that_looks_like_console_markup_is_shown_as_written() -> None:
    """A run's name is the user's: ``[/x]`` or ``[red]`` in it is text, on a console that reads markup too
    (the demo's), not a style nor a MarkupError."""
    name = "[/bold] [red]biomed"
    run = make_run(baseline=BASELINE, latest=FINAL).model_copy(update={"name": name})
    assert f"{name}: baseline vs final" in rendered(baseline_final_table(run))
    metrics, _ = comparison_tables([run])
    assert "[/bold]" in rendered(metrics)
