"""The ``bertpt train`` command: options from the hyperparameter schema, one-line errors, a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import TINY_RUN
from worker.pretraining.hyperparameters import Hyperparameters

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it


def _cli() -> Any:
    from worker.cli import cli

    return cli


def test_cli_options_come_from_the_schema() -> None:
    command = _cli().commands["train"]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    helps = {param.name: param.help for param in command.params}
    for name, info in Hyperparameters.model_fields.items():
        assert f"--{name.replace('_', '-')}" in options, name
        assert helps[name].startswith(info.description)
    assert "--no-whole-word-mask" in options and "--config" in options


def test_cli_bad_config_is_one_line_naming_the_field(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path
) -> None:
    from click.testing import CliRunner

    common = [
        "train",
        "--base",
        str(tiny_bert_dir),
        "--corpus",
        str(tiny_corpus),
        "--out",
        str(tmp_path / "run"),
    ]
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"max_step": 3}))
    runner = CliRunner()
    for extra, field in ((["--warmup-ratio", "2"], "warmup_ratio"), (["--config", str(config)], "max_step")):
        result = runner.invoke(_cli(), [*common, *extra])
        assert result.exit_code == 2, result.output
        (line,) = [line for line in result.output.splitlines() if line.strip()]
        assert line.startswith("error:") and field in line
    assert not (tmp_path / "run").exists()


def test_cli_runs_a_job_and_prints_the_summary(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    from click.testing import CliRunner

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"hyperparameters": {**TINY_RUN, "max_steps": 50}}))
    args = [
        "train",
        "--base",
        str(tiny_bert_dir),
        "--corpus",
        str(tiny_corpus),
        "--out",
        str(tmp_path / "run"),
    ]
    args += [
        "--config",
        str(config),
        "--cache-dir",
        str(cache_dir),
        "--max-steps",
        "3",
    ]
    result = CliRunner().invoke(_cli(), args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "completed after 3/3 steps" in result.output
    assert "baseline (step 0)" in result.output and "masked_lm_loss" in result.output
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
