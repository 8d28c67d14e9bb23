"""The ``bertpt train`` command: options from the hyperparameter schema, one-line errors, a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import TINY_RUN, with_one_bad_weight
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
    refused = [
        (["--warmup-ratio", "2"], "warmup_ratio"),
        (["--config", str(config)], "max_step"),
        (["--precision", "fp16"], "precision"),  # needs a GPU
        (["--max-seq-length", "128"], "max_seq_length"),  # the tiny BERT has 64 positions
        (["--replay-ratio", "0.95"], "replay_ratio"),  # at most 0.9
        (["--replay-ratio", "0.25"], "replay_ratio"),  # nothing to replay
        (["--replay-corpus", str(tiny_corpus)], "replay_corpus"),  # replay_ratio 0 would ignore it
    ]
    for extra, field in refused:
        result = runner.invoke(_cli(), [*common, *extra])
        assert result.exit_code == 2, result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert field in line and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_base_with_a_weight_that_is_not_finite(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path
) -> None:
    from click.testing import CliRunner

    broken = with_one_bad_weight(tiny_bert_dir, tmp_path / "diverged")
    args = ["train", "--base", str(broken), "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(_cli(), args, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert "parameter bert.encoder.layer.1.output.dense.weight holds NaN values" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_takes_the_builtin_names_of_the_service(
    tmp_path: Path, tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["train", "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run")]
    # The built-in resolves (offline): the run stops only at its 512 position embeddings.
    found = CliRunner().invoke(
        _cli(), [*args, "--base", "minilm-l6-h384-uncased", "--max-seq-length", "1024"]
    )
    assert found.exit_code == 2, found.output
    assert "1024 is more than the 512 position embeddings" in found.output
    unknown = CliRunner().invoke(_cli(), [*args, "--base", "minilm"], terminal_width=400)
    assert unknown.exit_code == 2, unknown.output
    assert "Did you mean 'minilm-l6-h384-uncased'?" in unknown.output and "Traceback" not in unknown.output
    assert "minilm-l6-h384-uncased" in CliRunner().invoke(_cli(), ["train", "--help"]).output
    assert not (tmp_path / "run").exists()


def test_cli_shows_the_corpus_warnings(
    tmp_path: Path, tiny_bert_dir: Path, blank_line_corpus: Path, cache_dir: Path
) -> None:
    from click.testing import CliRunner

    args = ["train", "--base", str(tiny_bert_dir), "--corpus", str(blank_line_corpus)]
    args += ["--out", str(tmp_path / "run"), "--cache-dir", str(cache_dir), "--max-steps", "2"]
    args += ["--max-seq-length", "64", "--batch-size", "8", "--eval-documents", "6"]
    result = CliRunner().invoke(_cli(), args, terminal_width=400)
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "run" / "result.json").read_text())["warnings"]
    assert {"blank_line_after_every_sentence", "is_next_share"} <= {w["code"] for w in stored}
    output = " ".join(result.output.split())  # the console wraps long lines
    for warning in stored:
        assert " ".join(warning["message"].split()) in output, warning["code"]


def test_cli_runs_a_job_and_prints_the_summary(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, small_corpus: Path, cache_dir: Path
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
    args += ["--replay-corpus", str(small_corpus), "--replay-ratio", "0.2"]
    result = CliRunner().invoke(_cli(), args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "completed after 3/3 steps" in result.output
    replay = json.loads((tmp_path / "run" / "result.json").read_text())["replay"]
    assert replay["ratio"] == 0.2 and f"replayed {replay['instances_per_epoch']} of every" in result.output
    assert "baseline (step 0)" in result.output and "masked_lm_loss" in result.output
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
