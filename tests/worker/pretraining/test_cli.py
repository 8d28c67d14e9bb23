"""The ``bertpt prepare`` command: one JSON report, one-line errors naming the line or the field."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
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
    assert report["corpus"]["documents"] > 500 and report["warnings"] == []
    assert "warnings" not in report["corpus"]  # one list of warnings: the report's
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


# -- every corpus problem shows in the output (issue 9) ----------------------------------------------------

CHINESE = ["这是一个用中文写的句子。", "它有很多汉字。"]
CONTROL = ["\x01\x02\x03", "\x7f"]


def problem_corpora(documents: list[list[str]]) -> dict[str, tuple[str, list[str]]]:
    """A corpus text with one problem each, the options that show it, and the warning code."""

    def text(docs: list[list[str]]) -> str:
        return "".join("\n".join(doc) + "\n\n" for doc in docs)

    paragraphs = [[" ".join(doc[i : i + 4]) for i in range(0, len(doc), 4)] for doc in documents[:60]]
    nfd = [[unicodedata.normalize("NFD", "Le café de l'été, à côté."), *doc] for doc in documents[:30]]
    return {
        "long_lines": (text(paragraphs), []),
        "is_next_share": (
            text([doc[:2] for doc in documents[:200]]),
            ["--max-seq-length", "16", "--nsp-balance", "google"],
        ),
        # No held-out split: one of only Chinese documents would be refused (nothing to predict).
        "tokenizer_mismatch": (text([CHINESE] * 40 + documents[:10]), ["--eval-fraction", "0"]),
        "unknown_tokens": (text([*documents[:60], *[CHINESE] * 20]), []),
        "unnormalized_text": (text(nfd), []),
        "documents_without_text": (text([*documents[:20], CONTROL])[:-1], []),
        "invisible_lines": (text(documents[:20]).replace("\n\n", "\n\ufeff\n", 1), []),
        "one_sentence_documents": (text([*documents[:20], ["Lonely."]]), []),
        "duplicate_documents": (text([*documents[:20], documents[0]]), []),
    }


@pytest.mark.parametrize(
    "code",
    [
        "long_lines",
        "is_next_share",
        "tokenizer_mismatch",
        "unknown_tokens",
        "unnormalized_text",
        "documents_without_text",
        "invisible_lines",
        "one_sentence_documents",
        "duplicate_documents",
    ],
)
def test_cli_shows_each_corpus_problem(tmp_path, documents, tokenizer_dir, code):
    text, options = problem_corpora(documents)[code]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    args = [
        "prepare",
        str(corpus),
        "--tokenizer",
        str(tokenizer_dir),
        "--out",
        str(tmp_path / "out"),
        *options,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert code in [warning["code"] for warning in report["warnings"]]
    assert any(line.startswith(f"warning: {code}") for line in result.stderr.splitlines()), result.stderr


def test_cli_one_document_trains_masked_lm_only_without_a_word_against_it(tmp_path, documents, tokenizer_dir):
    corpus = tmp_path / "book.txt"
    corpus.write_text("\n".join(s for doc in documents[:10] for s in doc) + "\n", encoding="utf-8")
    args = ["prepare", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out")]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "Set nsp to false" in refused.stderr
    result = CliRunner().invoke(cli, [*args, "--no-nsp"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # The reader's single_document warning says "train it with nsp: false": done, so not repeated.
    assert report["warnings"] == [] and report["is_next_share"] is None
    assert report["eval"]["instances"] > 0  # a block of the document is held out


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (["--dupe-factor", "5"], ("dupe_factor", "masking")),
        (["--no-nsp", "--nsp-balance", "google"], ("nsp_balance", "nsp")),
        (["--eval-documents", "3", "--eval-fraction", "0.2"], ("eval_documents", "eval_fraction")),
        (["--eval-corpus", "{corpus}", "--eval-documents", "3"], ("eval_documents", "eval_corpus")),
        (["--eval-corpus", "{corpus}", "--eval-fraction", "0.1"], ("eval_fraction", "eval_corpus")),
    ],
)
def test_cli_refuses_settings_that_would_be_ignored(tmp_path, small_corpus, tokenizer_dir, options, fields):
    options = [option.format(corpus=small_corpus) for option in options]
    args = ["prepare", str(small_corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path), *options]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert all(field in result.stderr for field in fields), result.stderr
    assert not any(tmp_path.iterdir())


def test_cli_refuses_whole_word_masking_on_chinese(tmp_path, tokenizer_dir):
    corpus = tmp_path / "zh.txt"
    corpus.write_text("".join("\n".join(CHINESE) + "\n\n" for _ in range(20)), encoding="utf-8")
    args = ["prepare", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--whole-word-mask"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: whole_word_mask:") and "without spaces" in result.stderr


def test_cli_refuses_a_sequence_length_the_checkpoint_cannot_take(tmp_path, small_corpus, tiny_bert_dir):
    args = ["prepare", str(small_corpus), "--tokenizer", str(tiny_bert_dir), "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--max-seq-length", "128"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: max_seq_length: 128 is more than the 64 position embeddings")
    assert "use max_seq_length 64 or less" in result.stderr and not any(tmp_path.iterdir())


def test_cli_takes_a_builtin_name_for_the_tokenizer(tmp_path, small_corpus, minilm_dir):
    args = ["prepare", str(small_corpus), "--tokenizer", "minilm-l6-h384-uncased", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--max-seq-length", "1024"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"error: max_seq_length: 1024 is more than the 512 position embeddings of the model in {minilm_dir}"
    )
