"""``bertpt evaluate`` end to end on the two tiny BERTs: the table, --json, --test, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.worker.evaluation.conftest import topic_examples
from worker.evaluation.labelled import LabelledExample, stratified_split
from worker.evaluation.results import ComparisonResult
from worker.evaluation.settings import EvaluationHyperparameters

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # fine-tunes and probes tiny BERTs


def _tsv(path: Path, examples: list[LabelledExample]) -> Path:
    path.write_text("text\tlabel\n" + "".join(f"{e.text}\t{e.label}\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tsv(tmp_path_factory.mktemp("evaluate") / "topics.tsv", topic_examples())


@pytest.fixture(scope="module")
def probe_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "probe.json"
    path.write_text(json.dumps({"method": "probe", "hyperparameters": {"probe_cv_folds": 3, "probe_cs": 4}}))
    return path


def _evaluate(*args: Any) -> Result:
    from worker.cli import cli

    # COLUMNS: a terminal wide enough that rich does not wrap the table's cells
    return CliRunner().invoke(
        cli, ["evaluate", *map(str, args)], catch_exceptions=False, env={"COLUMNS": "250"}
    )


def test_prints_the_comparison_table(
    dataset: Path, probe_config: Path, tiny_bert_dir: Path, tiny_encoder_dir: Path
) -> None:
    result = _evaluate(
        "--dataset", dataset, "--model", tiny_bert_dir, "--model", tiny_encoder_dir,
        "--config", probe_config, "--seeds", 2,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "probe on 96 training / 24 test examples, 3 labels, seeds [0, 1]" in out
    assert "macro-F1 (%)" in out and "Δ accuracy vs first (95% CI)" in out
    baseline_line = next(line for line in out.splitlines() if str(tiny_bert_dir.name) in line)
    assert "baseline" in baseline_line and "±" in baseline_line


def test_json_is_the_comparison_result(dataset: Path, tiny_bert_dir: Path) -> None:
    """Fine-tuning from the options (one per hyperparameter): the split is the documented one."""
    result = _evaluate(
        "--dataset", dataset, "--model", tiny_bert_dir, "--seeds", 1, "--json",
        "--learning-rate", 5e-3, "--batch-size", 8, "--min-train-steps", 12,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    comparison = ComparisonResult.model_validate(json.loads(result.stdout))
    defaults = EvaluationHyperparameters()
    train, test = stratified_split(topic_examples(), defaults.test_fraction, seed=defaults.split_seed)
    assert (comparison.train_examples, comparison.test_examples) == (len(train), len(test))
    assert comparison.method == "finetune" and comparison.seeds == [0]
    assert comparison.models[0].model == str(tiny_bert_dir)
    assert comparison.hyperparameters["learning_rate"] == 5e-3
    assert comparison.hyperparameters["min_train_steps"] == 12
    assert len(comparison.models[0].accuracy.per_seed) == 1


def test_a_separate_test_file(tmp_path: Path, dataset: Path, probe_config: Path, tiny_bert_dir: Path) -> None:
    test = _tsv(tmp_path / "test.tsv", topic_examples(per_topic=5, seed=1))
    result = _evaluate(
        "--dataset", dataset, "--test", test, "--model", tiny_bert_dir, "--config", probe_config,
        "--seeds", 1, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    comparison = ComparisonResult.model_validate(json.loads(result.stdout))
    assert (comparison.train_examples, comparison.test_examples) == (120, 15)


def _error(result: Result) -> str:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_bad_input_is_one_line_with_a_non_zero_exit(
    tmp_path: Path, dataset: Path, tiny_bert_dir: Path
) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nsome words\tpos\nmore words\t\n", encoding="utf-8")
    line = _error(_evaluate("--dataset", bad, "--model", tiny_bert_dir))
    assert line.startswith("error: bad.tsv line 3: field 'label'"), line

    test = _tsv(tmp_path / "test.tsv", [LabelledExample(text="words", label="delta")])
    line = _error(_evaluate("--dataset", dataset, "--test", test, "--model", tiny_bert_dir))
    assert "test.tsv line 2: field 'label'" in line and "'delta'" in line

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"learning_rat": 1e-4}))
    result = _evaluate("--dataset", dataset, "--model", tiny_bert_dir, "--config", config)
    assert "unknown setting 'hyperparameters.learning_rat'" in _error(result)
    assert result.exit_code == 2

    ignored = ("--method", "probe", "--learning-rate", 1e-4)  # a setting the probe would silently ignore
    result = _evaluate("--dataset", dataset, "--model", tiny_bert_dir, *ignored)
    assert "hyperparameters.learning_rate: learning_rate is not used by method 'probe'" in _error(result)
    assert result.exit_code == 2

    result = _evaluate("--dataset", dataset, "--model", tmp_path / "missing")
    assert "does not exist" in _error(result) and result.exit_code == 2
