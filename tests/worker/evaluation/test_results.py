"""The result types' renderings: what the CLI table and logs show."""

from __future__ import annotations

from worker.evaluation.results import (
    TABLE_HEADERS,
    ComparisonResult,
    MetricSummary,
    ModelResult,
    PairedDifference,
)


def _result() -> ComparisonResult:
    accuracy = MetricSummary(mean=0.842, sd=0.021, per_seed=[0.821, 0.863])
    f1 = MetricSummary(mean=0.8, sd=0.0, per_seed=[0.8, 0.8])
    gain = PairedDifference(mean=0.031, ci_low=0.002, ci_high=0.06, n=2)
    noise = PairedDifference(mean=-0.01, ci_low=-0.05, ci_high=0.03, n=2)
    return ComparisonResult(
        method="finetune",
        seeds=[0, 1],
        labels=["neg", "pos"],
        train_examples=90,
        test_examples=30,
        models=[
            ModelResult(model="base", accuracy=accuracy, macro_f1=f1),
            ModelResult(
                model="adapted",
                accuracy=accuracy,
                macro_f1=f1,
                difference_vs_first={"accuracy": gain, "macro_f1": noise},
            ),
        ],
        hyperparameters={},
        runtime_seconds=1.5,
    )


def test_table_rows_show_percent_and_mark_intervals_that_exclude_zero() -> None:
    rows = _result().table_rows()
    assert rows == [
        ("base", "84.2 ± 2.1", "80.0 ± 0.0", "baseline", "baseline"),
        ("adapted", "84.2 ± 2.1", "80.0 ± 0.0", "+3.1 [+0.2, +6.0] *", "-1.0 [-5.0, +3.0]"),
    ]
    assert len(TABLE_HEADERS) == len(rows[0])


def test_one_seed_shows_no_sd_and_no_interval() -> None:
    assert MetricSummary(mean=0.5, sd=None, per_seed=[0.5]).format() == "50.0"
    assert PairedDifference(mean=0.02, ci_low=None, ci_high=None, n=1).format() == "+2.0"


def test_plain_text_table_and_json_round_trip() -> None:
    result = _result()
    text = result.to_text()
    assert text.splitlines()[0].startswith("finetune on 90 training / 30 test examples, 2 labels")
    assert "+3.1 [+0.2, +6.0] *" in text
    assert ComparisonResult.model_validate_json(result.model_dump_json()) == result
