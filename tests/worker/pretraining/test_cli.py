"""The ``bertpt prepare`` command: one JSON report, one-line errors naming the line or the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from worker.cli import cli


def test_cli_prints_one_json_object(tmp_path, sample_corpus, tokenizer_dir):
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            str(sample_corpus),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(tmp_path),
            "--max-seq-length",
            "64",
            "--seed",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in (
        "instances",
        "tokens",
        "is_next_share",
        "mean_length",
        "short_target_share",
        "truncated_pairs",
        "masked_share",
        "unk_rate",
        "wordpieces_per_word",
        "cache_key",
        "seconds",
    ):
        assert key in report, key
    assert report["corpus"]["documents"] > 500 and report["corpus"]["warnings"] == []
    assert report["config"]["max_seq_length"] == 64 and report["config"]["seed"] == 5
    assert 0.4 < report["is_next_share"] < 0.55
    assert 0.05 < report["short_target_share"] < 0.15
    assert report["mean_length"] <= 64
    assert report["eval"]["instances"] > 0


def test_cli_bad_corpus_is_one_line_with_the_line_number(tmp_path, tokenizer_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"One sentence.\nAnother.\n\nA third\x00 with a NUL.\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "prepare",
            str(corpus),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "line 4" in lines[0] and "corpus.txt" in lines[0]


def test_cli_unknown_or_bad_hyperparameter_names_the_field(tmp_path, sample_corpus, tokenizer_dir):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"max_seq_lenght": 64}))
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            str(sample_corpus),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(tmp_path),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 2
    assert "max_seq_lenght" in result.output and "unknown hyperparameter" in result.output
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            str(sample_corpus),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(tmp_path),
            "--masked-lm-prob",
            "1.5",
        ],
    )
    assert result.exit_code == 2 and "masked_lm_prob" in result.output
